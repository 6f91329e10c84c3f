"""Launch the cvl_localizer lifecycle node on a real ROS 2 install.

    ros2 launch cvl_ros localize.launch.py \
        params_file:=/path/to/localize.yaml use_sim_time:=true namespace:=car1 \
        autostart:=true log_level:=info tf_remap:=false \
        checkpoint_path:=/data/cvlnet/model.safetensors database_path:=/data/tiles_db

The pip-only world has no `launch`/`launch_ros`: run the same node with the same parameters file
through the console script instead:

    cvl-localize --ros-args --params-file config/localize.yaml

Arguments
- params_file: node parameters (default: the package's config/localize.yaml)
- use_sim_time: use /clock (bag replay)
- namespace: namespace of the node (topics such as `image` and `odom` resolve inside it)
- autostart: drive configure -> activate through lifecycle events (the node's own `autostart`
  parameter is forced false so that launch alone drives the transitions). A failed configure
  (invalid parameter, model or tile database missing: the reason is in the log and in
  /diagnostics) is retried every 5 s, as `cvl-localize` does by itself. Leave it false when a
  lifecycle manager (nav2's lifecycle_manager) drives the node.
- log_level: debug | info | warn | error | fatal
- tf_remap: remap /tf and /tf_static to the namespaced `tf`/`tf_static` (multi-robot setups)
- checkpoint_path, database_path: the model checkpoint and the tile database; empty (default):
  the params file's values
Topic remaps (image, camera_info, odom, imu, gps/fix, initialpose) are best given in a wrapping
launch file or with `--ros-args -r` for your driver's names.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    OpaqueFunction,
    RegisterEventHandler,
    TimerAction,
)
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription

#: A failed configure is retried this often [s] (as cvl_ros.ros.node.AUTOSTART_RETRY_S).
CONFIGURE_RETRY_S = 5.0


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _node_parameters(use_sim_time: bool, checkpoint_path: str, database_path: str) -> dict:
    """Parameters given on top of the params file (an empty path keeps the file's value)."""
    out = {"use_sim_time": use_sim_time, "autostart": False}
    if checkpoint_path.strip():
        out["checkpoint_path"] = checkpoint_path.strip()
    if database_path.strip():
        out["database_path"] = database_path.strip()
    return out


def _setup(context, *args, **kwargs):
    params_file = LaunchConfiguration("params_file").perform(context)
    use_sim_time = _truthy(LaunchConfiguration("use_sim_time").perform(context))
    namespace = LaunchConfiguration("namespace").perform(context)
    autostart = _truthy(LaunchConfiguration("autostart").perform(context))
    log_level = LaunchConfiguration("log_level").perform(context)
    tf_remap = _truthy(LaunchConfiguration("tf_remap").perform(context))
    checkpoint_path = LaunchConfiguration("checkpoint_path").perform(context)
    database_path = LaunchConfiguration("database_path").perform(context)
    remappings = [("/tf", "tf"), ("/tf_static", "tf_static")] if tf_remap else []
    node = LifecycleNode(
        package="cvl_ros",
        executable="cvl-localize",
        name="cvl_localizer",
        namespace=namespace,
        output="screen",
        parameters=[params_file, _node_parameters(use_sim_time, checkpoint_path, database_path)],
        remappings=remappings,
        arguments=["--ros-args", "--log-level", log_level],
    )
    def change_state(transition_id):
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                           transition_id=transition_id))

    actions = [node]
    if autostart:
        actions.append(change_state(Transition.TRANSITION_CONFIGURE))
        actions.append(RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
            entities=[change_state(Transition.TRANSITION_ACTIVATE)])))
        # configure failed (back to unconfigured): try again later, a fresh timer each time
        actions.append(RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state="configuring", goal_state="unconfigured",
            entities=[OpaqueFunction(function=lambda _context: [TimerAction(
                period=CONFIGURE_RETRY_S,
                actions=[change_state(Transition.TRANSITION_CONFIGURE)])])])))
    return actions


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("cvl_ros"), "config",
                                  "localize.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="node parameters file"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (bag replay)"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate the lifecycle node"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="debug|info|warn|error|fatal"),
        DeclareLaunchArgument("tf_remap", default_value="false",
                              description="remap /tf and /tf_static to namespaced tf, tf_static"),
        DeclareLaunchArgument("checkpoint_path", default_value="",
                              description="model checkpoint (empty: the params file's)"),
        DeclareLaunchArgument("database_path", default_value="",
                              description="tile database folder (empty: the params file's)"),
        OpaqueFunction(function=_setup),
    ])
