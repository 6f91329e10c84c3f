"""Generator settings ("styles") of the synthetic town.

Training styles (``suburb``, ``downtown``) and test styles (``old_town``, ``hard``) draw from
ranges that do not overlap where it matters (block size, road curvature, building height and
setback, palettes, tree species and season, satellite sun and colour shift), so a model trained on
the first never saw the settings of the second. Every style keeps the ground-level structure
(road layout, junction shapes, markings, curbs, building footprints) identical in both views.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

__all__ = ["Style", "STYLES", "get_style", "TRAIN_STYLES", "TEST_STYLES"]


Rgb = tuple[int, int, int]


@dataclass(frozen=True)
class Style:
    """All generator settings of one town style (ranges are (low, high), drawn uniformly)."""

    name: str
    description: str
    # --- road network ---
    block_m: tuple[float, float] = (70.0, 95.0)  # spacing of the jittered grid of junctions
    jitter_frac: float = 0.12  # junction jitter as a fraction of the block size
    curve_prob: float = 0.15  # probability that a road segment is a curve
    curve_bulge_frac: tuple[float, float] = (0.08, 0.2)  # bulge / segment length
    drop_edge_prob: float = 0.12  # removed grid edges (T-junctions, dead ends avoided)
    lanes_per_dir: tuple[int, int] = (1, 1)
    lane_w_m: float = 3.2
    parking_lane_prob: float = 0.5  # a road has parking strips (2.2 m) on both sides
    sidewalk_w_m: tuple[float, float] = (1.8, 2.8)
    curb_w_m: float = 0.25
    # --- markings ---
    centre_line: str = "dashed"  # dashed | solid | mixed
    edge_line_prob: float = 0.8
    marking_wear: tuple[float, float] = (0.0, 0.25)  # fraction of marking paint worn away
    missing_marking_prob: float = 0.1  # a whole segment without any marking
    crosswalk_prob: float = 0.4
    # --- buildings ---
    setback_m: tuple[float, float] = (3.0, 8.0)
    building_len_m: tuple[float, float] = (9.0, 16.0)
    building_depth_m: tuple[float, float] = (8.0, 13.0)
    building_gap_m: tuple[float, float] = (4.0, 12.0)
    building_h_m: tuple[float, float] = (5.0, 10.0)
    building_fill: float = 0.75  # probability a slot along a road holds a building
    gable_prob: float = 0.6
    roof_palette: tuple[Rgb, ...] = ((150, 60, 45), (120, 70, 60), (90, 90, 95), (160, 110, 80))
    facade_palette: tuple[Rgb, ...] = ((225, 215, 195), (200, 190, 170), (235, 230, 220),
                                       (190, 170, 150), (215, 205, 180))
    # --- vegetation ---
    street_tree_spacing_m: tuple[float, float] = (10.0, 18.0)
    street_tree_prob: float = 0.6  # a road side has a tree row
    yard_trees_per_ha: float = 25.0
    canopy_r_m: tuple[float, float] = (2.2, 4.0)
    canopy_base_m: tuple[float, float] = (2.2, 3.5)
    canopy_top_m: tuple[float, float] = (7.0, 12.0)
    deciduous_frac: float = 0.8
    conifer_frac: float = 0.0  # conical canopies (never leaf-off)
    sat_leaf_off_prob: float = 0.0  # per deciduous tree, bare in the satellite image
    ground_leaf_off_prob: float = 0.0  # per deciduous tree, bare in the video
    grass_rgb: tuple[Rgb, Rgb] = ((80, 120, 55), (105, 135, 60))
    canopy_rgb: tuple[Rgb, Rgb] = ((45, 85, 35), (75, 110, 45))
    # --- ground colours (video view) ---
    road_rgb: tuple[Rgb, Rgb] = ((85, 85, 88), (105, 104, 102))
    sidewalk_rgb: tuple[Rgb, Rgb] = ((150, 145, 140), (175, 170, 160))
    parking_lot_prob: float = 0.15  # per block, a parking lot instead of buildings
    # --- cars ---
    parked_car_spacing_m: tuple[float, float] = (6.0, 14.0)
    parked_car_prob: float = 0.5  # per parking slot
    car_both_views_prob: float = 0.5  # else in the satellite only or in the video only
    moving_cars_per_km: float = 12.0  # satellite only (moved on since)
    # --- satellite capture ---
    sat_sun_elev_deg: tuple[float, float] = (35.0, 60.0)
    sat_shadow_strength: tuple[float, float] = (0.45, 0.6)
    sat_gain: tuple[float, float] = (0.85, 1.15)
    sat_gamma: tuple[float, float] = (0.85, 1.15)
    sat_wb: float = 0.08  # per-channel gain spread
    sat_saturation: tuple[float, float] = (0.7, 1.1)
    sat_haze: tuple[float, float] = (0.0, 0.1)
    sat_lean_m_per_m: tuple[float, float] = (0.0, 0.05)  # off-nadir lean of tall things
    sat_blur_px: float = 0.6
    # --- video capture ---
    video_sun_elev_deg: tuple[float, float] = (25.0, 60.0)
    video_shadow_strength: tuple[float, float] = (0.35, 0.55)
    video_gain: tuple[float, float] = (0.9, 1.1)
    video_wb: float = 0.05
    roll_pitch_noise_deg: float = 0.4
    # --- GPS / heading noise written to oxts/ ---
    gps_noise_m: tuple[float, float] = (1.0, 3.0)
    heading_noise_deg: float = 2.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain-JSON dictionary of every setting."""
        return asdict(self)


_SUBURB = Style(
    name="suburb",
    description="train: detached houses with setbacks and lawns, gentle curves, many leafy trees "
    "(20% bare in the satellite), warm roofs, crisp dashed centre lines, mid-day satellite",
    sat_leaf_off_prob=0.2,
)

_DOWNTOWN = Style(
    name="downtown",
    description="train: tight straight grid, 2 lanes per direction, tall block buildings at the "
    "sidewalk, parking lots, few street trees, grey/flat roofs, solid centre lines",
    block_m=(75.0, 95.0),
    jitter_frac=0.05,
    curve_prob=0.0,
    drop_edge_prob=0.05,
    lanes_per_dir=(1, 2),
    parking_lane_prob=0.6,
    sidewalk_w_m=(3.0, 4.5),
    centre_line="solid",
    edge_line_prob=0.95,
    marking_wear=(0.0, 0.15),
    missing_marking_prob=0.03,
    crosswalk_prob=0.8,
    setback_m=(0.5, 1.5),
    building_len_m=(10.0, 24.0),
    building_depth_m=(14.0, 24.0),
    building_gap_m=(0.0, 1.5),
    building_h_m=(14.0, 40.0),
    building_fill=0.9,
    gable_prob=0.0,
    roof_palette=((110, 110, 112), (140, 138, 135), (90, 95, 100), (170, 170, 165), (70, 72, 75)),
    facade_palette=((160, 160, 165), (120, 125, 135), (185, 180, 170), (95, 100, 110),
                    (200, 195, 185)),
    street_tree_spacing_m=(12.0, 20.0),
    street_tree_prob=0.35,
    yard_trees_per_ha=3.0,
    canopy_r_m=(1.8, 3.0),
    ground_leaf_off_prob=0.2,
    parking_lot_prob=0.25,
    parked_car_spacing_m=(5.5, 9.0),
    parked_car_prob=0.7,
    moving_cars_per_km=30.0,
    sat_sun_elev_deg=(45.0, 65.0),
)

_OLD_TOWN = Style(
    name="old_town",
    description="test: irregular jittered network with curves and T-junctions, narrow roads, worn "
    "or missing markings, terraced houses with pastel facades and terracotta roofs, "
    "conifers and leaf-off trees, low sun with long shadows, strong satellite colour shift",
    block_m=(45.0, 65.0),
    jitter_frac=0.22,
    curve_prob=0.45,
    curve_bulge_frac=(0.12, 0.28),
    drop_edge_prob=0.3,
    lanes_per_dir=(1, 1),
    lane_w_m=3.0,
    parking_lane_prob=0.35,
    sidewalk_w_m=(1.2, 2.0),
    centre_line="mixed",
    edge_line_prob=0.3,
    marking_wear=(0.3, 0.7),
    missing_marking_prob=0.35,
    crosswalk_prob=0.2,
    setback_m=(0.5, 2.5),
    building_len_m=(6.0, 12.0),
    building_depth_m=(9.0, 14.0),
    building_gap_m=(0.0, 2.0),
    building_h_m=(9.0, 16.0),
    building_fill=0.85,
    gable_prob=0.85,
    roof_palette=((185, 95, 60), (170, 80, 55), (140, 70, 50), (120, 110, 100), (200, 120, 80)),
    facade_palette=((230, 200, 160), (200, 160, 150), (215, 225, 195), (235, 210, 120),
                    (180, 190, 215), (240, 180, 150)),
    street_tree_spacing_m=(14.0, 25.0),
    street_tree_prob=0.3,
    yard_trees_per_ha=18.0,
    canopy_r_m=(2.0, 4.5),
    canopy_top_m=(6.0, 14.0),
    deciduous_frac=0.6,
    conifer_frac=0.3,
    sat_leaf_off_prob=0.6,
    ground_leaf_off_prob=0.0,
    grass_rgb=((95, 115, 60), (130, 130, 70)),
    canopy_rgb=((35, 70, 40), (70, 95, 40)),
    road_rgb=((95, 90, 85), (125, 118, 110)),
    sidewalk_rgb=((160, 140, 120), (190, 170, 150)),
    parking_lot_prob=0.08,
    parked_car_prob=0.6,
    car_both_views_prob=0.35,
    moving_cars_per_km=15.0,
    sat_sun_elev_deg=(20.0, 32.0),
    sat_shadow_strength=(0.55, 0.7),
    sat_gain=(0.7, 1.3),
    sat_gamma=(0.75, 1.3),
    sat_wb=0.15,
    sat_saturation=(0.5, 1.2),
    sat_haze=(0.05, 0.2),
    sat_lean_m_per_m=(0.03, 0.1),
    sat_blur_px=0.9,
    video_sun_elev_deg=(15.0, 45.0),
    roll_pitch_noise_deg=0.6,
)

_HARD = replace(
    _OLD_TOWN,
    name="hard",
    description="test: old_town layout plus the widest gap: video in leaf-off season while the "
    "satellite is leaf-on (or the reverse), most cars in one view only, heavier GPS noise",
    sat_leaf_off_prob=0.0,
    ground_leaf_off_prob=0.7,
    deciduous_frac=0.75,
    conifer_frac=0.15,
    car_both_views_prob=0.2,
    marking_wear=(0.4, 0.8),
    missing_marking_prob=0.45,
    gps_noise_m=(2.0, 3.0),
    heading_noise_deg=2.5,
    sat_gain=(0.65, 1.35),
)

STYLES: dict[str, Style] = {s.name: s for s in (_SUBURB, _DOWNTOWN, _OLD_TOWN, _HARD)}
TRAIN_STYLES = ("suburb", "downtown")
TEST_STYLES = ("old_town", "hard")


def get_style(name: str) -> Style:
    """Return the style called ``name`` (ValueError listing the known names otherwise)."""
    try:
        return STYLES[name]
    except KeyError:
        raise ValueError(f"unknown style {name!r}; known: {', '.join(STYLES)}") from None
