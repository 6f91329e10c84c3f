"""cvl_ros.model."""
