"""Python side of cvl_ros for the pip-only world (scripts/setup.sh installs it editable).

On a real ROS 2 install the package is built by colcon through CMakeLists.txt (ament_cmake +
ament_cmake_python); this file is not used there. Console scripts are listed in setup.cfg.
"""

import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "cvl_ros"


def _files(pattern):
    return sorted(f for f in glob(pattern) if os.path.isfile(f))


setup(
    name=PACKAGE,
    version="0.1.0",
    description="Cross-view video-based localization (CVLNet) as a ROS 2 node",
    license="Apache-2.0",
    maintainer="cvl_ros maintainers",
    maintainer_email="cvl-ros-maintainers@example.org",
    python_requires=">=3.10",
    # package_dir {"": "."}: pip's editable install then adds the checkout to sys.path with a
    # plain .pth entry, so the checkout's cvl_ros (a regular package) wins over the interface
    # folder in site-packages, which cvl_ros/__init__.py adds to its __path__ (extend_path).
    package_dir={"": "."},
    packages=find_packages(where=".", include=[PACKAGE, PACKAGE + ".*"]),
    include_package_data=False,
    zip_safe=False,
    # Editable installs of this setuptools skip data_files: scripts/setup.sh installs them
    # separately with `setup.py install_data`.
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", _files("launch/*.py")),
        ("share/" + PACKAGE + "/config", _files("config/*")),
    ],
)
