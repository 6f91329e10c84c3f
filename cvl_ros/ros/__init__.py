"""cvl_ros.ros."""
