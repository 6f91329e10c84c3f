"""cvl_ros.cli."""
