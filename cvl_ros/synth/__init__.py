"""cvl_ros.synth."""
