"""cvl_ros.synth: seeded procedural towns written in the KITTI raw + KITTI-CVL formats.

Modules: ``styles`` (generator settings per style), ``town`` (the 2.5D town), ``appearance``
(lighting, cast shadows, ground colours), ``render_satellite`` (georeferenced mosaic),
``render_ground`` (forward camera), ``drive`` (10 Hz drives, video-only traffic), ``cli``
(``cvl-synth``), ``odometry`` (simulated wheel/visual odometry). ROS-free.
"""
