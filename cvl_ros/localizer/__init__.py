"""cvl_ros.localizer."""
