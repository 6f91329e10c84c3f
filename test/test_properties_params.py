"""Property tests of ``cvl_ros.params.validate`` (issue 13, item 6).

Arbitrary dicts of known parameter names with arbitrary JSON-ish values (what a params file or
``ros2 param set`` can carry: null, booleans, integers of any size, floats with NaN/Inf, strings,
lists, mappings): ``validate`` returns every parameter typed and in range, or raises
:class:`ParameterError`; never another exception. Whatever it returns builds a LocalizerConfig
and a FrontendConfig, and its rates give a timer period rclpy can represent.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cvl_ros import params as P
from cvl_ros.localizer import LocalizerConfig
from cvl_ros.localizer.frontend import FrontendConfig

SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NAMES = sorted(P.PARAMS)

numbers = st.one_of(
    st.sampled_from([0, 1, -1, 2, 10**18, 2**63 - 1, 2**63, 10**30, 10**400, -10**400, 0.0, -0.0,
                     0.5, -0.5, 1e-300, 5e-324, 1e300, -1e300, 1.7e308, float("nan"),
                     float("inf"), float("-inf")]),
    st.integers(), st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8),
                    st.sampled_from(["auto", "cpu", "cuda", "cuda:1", "mps", "imu", "odom",
                                     "tf", "posterior", "score_map", "true", "1.0", ""]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=7)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                           max_leaves=10)


@st.composite
def value_for(draw, name):
    """A value for ``name``: often of the right kind (so the range rules are reached)."""
    p = P.PARAMS[name]
    kind = p.kind
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(json_values)
    if kind == "bool":
        return draw(st.booleans())
    if kind == "str":
        return draw(st.sampled_from(list(p.choices) or ["", "x"]) | st.text(max_size=8))
    if kind == "float_list":
        return draw(st.lists(numbers, min_size=0, max_size=8)
                    | st.lists(st.floats(-10, 10), min_size=6, max_size=6))
    if kind == "int":
        return draw(numbers.filter(lambda v: isinstance(v, int)) | st.integers(-3, 10))
    return draw(numbers | st.floats(-10, 1e4))


@st.composite
def param_dicts(draw):
    names = draw(st.lists(st.sampled_from(NAMES), max_size=8, unique=True))
    return {n: draw(value_for(n)) for n in names}


def _check_typed_and_in_range(out: dict) -> None:
    assert set(out) == set(P.PARAMS)
    for name, p in P.PARAMS.items():
        v = out[name]
        if p.kind == "bool":
            assert type(v) is bool, name
        elif p.kind == "int":
            assert type(v) is int and -2**63 <= v < 2**63, (name, v)
        elif p.kind == "float":
            assert type(v) is float and math.isfinite(v), (name, v)
        elif p.kind == "str":
            assert type(v) is str, name
        else:
            assert type(v) is list and len(v) == 6, (name, v)
            assert all(type(x) is float and math.isfinite(x) for x in v), (name, v)
        if p.choices:
            assert v in p.choices, (name, v)
        if p.at_least is not None:
            assert v >= p.at_least, (name, v)
    for name in ("diagnostics_rate_hz", "tf_publish_rate_hz"):  # 1 / rate: rclpy's timer
        rate = out[name]
        if rate > 0:
            assert 0 < (1.0 / rate) * 1e9 < 2**63, f"{name} = {rate} Hz: no timer period"
    if not out["use_database_datum"]:
        assert abs(out["map_datum_latitude_deg"]) <= 90
        assert abs(out["map_datum_longitude_deg"]) <= 180


@SETTINGS
@given(param_dicts())
# found by this test: float(10**400) raised OverflowError; math.isfinite(10**400) too
@example({"odom_wait_s": 10**400})
@example({"camera_extrinsics_xyz_rpy": [0, 0, 10**400, 0, 0, 0]})
@example({"localizer.window_length": 10**400})
@example({"queue_size": 2**64})
# ...and a positive rate whose period 1 / rate overflows rclpy's timer (create_timer raised)
@example({"diagnostics_rate_hz": 5e-324})
@example({"tf_publish_rate_hz": 1e-300})
def test_validate_returns_typed_in_range_values_or_raises_parameter_error(values):
    try:
        out = P.validate(values)
    except P.ParameterError as exc:
        assert exc.errors and all(isinstance(e, str) and e for e in exc.errors)
        # the message names a parameter it was given (a LocalizerConfig field by its own name,
        # without "localizer."), or the datum rule over several
        assert any(name.split(".")[-1] in str(exc) for name in values) or "datum" in str(exc)
        return
    _check_typed_and_in_range(out)
    for name, v in values.items():  # what was given is what is returned (ints as floats)
        if isinstance(v, list):
            assert out[name] == [float(x) for x in v]
        else:
            assert out[name] == (float(v) if P.PARAMS[name].kind == "float" else v)
    assert isinstance(P.localizer_config(out), LocalizerConfig)
    assert isinstance(P.frontend_config(out), FrontendConfig)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=4))
def test_unknown_names_are_refused_never_crash(values):
    try:
        out = P.validate(values)
    except P.ParameterError:
        return
    assert all(name in P.PARAMS for name in values)
    _check_typed_and_in_range(out)
