"""cvl_ros: cross-view video-based localization (CVLNet) as a ROS 2 node.

The generated interfaces (``cvl_ros.msg``) are installed into the environment's site-packages by
the interface build; ``extend_path`` lets an editable checkout find them there.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
