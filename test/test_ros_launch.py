"""launch/localize.launch.py: parsed everywhere; exercised where launch_ros imports."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch" / "localize.launch.py"
ARGS = {"params_file", "use_sim_time", "namespace", "autostart", "log_level", "tf_remap",
        "checkpoint_path", "database_path"}


def test_launch_file_parses_and_declares_the_documented_arguments():
    tree = ast.parse(LAUNCH.read_text())
    declared = {
        node.args[0].value for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"
    }
    assert declared == ARGS


def test_launch_paths_override_the_params_file_only_when_given():
    """checkpoint_path/database_path: given -> node parameters; empty -> the params file's."""
    tree = ast.parse(LAUNCH.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
              and n.name == "_node_parameters")
    ns: dict = {}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(LAUNCH), "exec"), ns)
    params = ns["_node_parameters"]
    assert params(True, "", " ") == {"use_sim_time": True, "autostart": False}
    assert params(False, "/m/model.safetensors", "/data/db") == {
        "use_sim_time": False, "autostart": False, "checkpoint_path": "/m/model.safetensors",
        "database_path": "/data/db"}


def _launch_ros_skip_reason():
    try:
        import launch_ros  # noqa: F401

        import launch  # noqa: F401
        from launch import LaunchDescription  # noqa: F401
    except Exception as exc:
        return f"launch_ros is not importable here ({exc}); it comes with a real ROS 2 install"
    return None


@pytest.mark.skipif(_launch_ros_skip_reason() is not None, reason=str(_launch_ros_skip_reason()))
def test_launch_description_builds_the_lifecycle_node():
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch_ros.actions import LifecycleNode

    from launch import LaunchContext

    spec = importlib.util.spec_from_file_location("localize_launch", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        ld = mod.generate_launch_description()
    except Exception as exc:
        pytest.skip(f"cvl_ros is not installed in the ROS prefix ({exc})")
    ents = ld.entities
    assert {e.name for e in ents if isinstance(e, DeclareLaunchArgument)} == ARGS
    ctx = LaunchContext()
    for e in ents:
        if isinstance(e, DeclareLaunchArgument):
            e.visit(ctx)
    ctx.launch_configurations.update({"params_file": "/tmp/x.yaml", "namespace": "car1",
                                      "tf_remap": "true", "autostart": "true",
                                      "database_path": "/data/db"})
    opaque = [e for e in ents if isinstance(e, OpaqueFunction)][0]
    actions = opaque.execute(ctx)
    nodes = [a for a in actions if isinstance(a, LifecycleNode)]
    # node + configure event + activate handler + configure-retry handler
    assert len(nodes) == 1 and len(actions) == 4
