"""Static checks of the Slicer module (issue 3, must-show 3): every widget the code uses exists in the .ui, every
SlicerParameterName is a parameter-node field, and the module file parses without Slicer."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "TextPromptSeg" / "TextPromptSeg.py"
UI = ROOT / "Resources" / "UI" / "TextPromptSeg.ui"


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def _parameter_fields() -> dict[str, str]:
    tree = ast.parse(MODULE.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper"
                                                  for d in node.decorator_list):
            return {stmt.target.id: ast.unparse(stmt.annotation) for stmt in node.body
                    if isinstance(stmt, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in TextPromptSeg.py")


def _module_constants() -> dict[str, object]:
    """Module-level literal assignments of TextPromptSeg.py (the Choice tuples)."""
    out = {}
    for node in ast.parse(MODULE.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def _annotation(text: str) -> tuple[str, dict[str, object]]:
    """'Annotated[int, Minimum(-1)]' -> ('int', {'Minimum': -1}); Choice(NAME) resolves NAME."""
    tree = ast.parse(text, mode="eval").body
    if not (isinstance(tree, ast.Subscript) and getattr(tree.value, "id", None) == "Annotated"):
        return text, {}
    base, *extras = tree.slice.elts
    constants = _module_constants()
    validators = {}
    for extra in extras:
        arg = extra.args[0]
        validators[extra.func.id] = constants[arg.id] if isinstance(arg, ast.Name) else ast.literal_eval(arg)
    return ast.unparse(base), validators


def _property(widget: ET.Element, name: str):
    prop = widget.find(f"property[@name='{name}']")
    return None if prop is None else prop[0].text


def test_every_widget_used_in_code_exists_in_the_ui():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text()))
    missing = used - set(_ui_widgets())
    assert not missing, f"widgets used in TextPromptSeg.py but absent from the .ui: {sorted(missing)}"
    assert {"segmentButton", "cancelButton", "progressBar", "promptsTextEdit"} <= used


def test_every_parameter_name_is_a_parameter_node_field():
    fields = _parameter_fields()
    bound = {}
    for name, widget in _ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.find("string").text
    assert bound, "no widget is bound to the parameter node"
    unknown = {w: p for w, p in bound.items() if p not in fields}
    assert not unknown, f"SlicerParameterName values without a parameter-node field: {unknown}"
    assert {"inputVolume", "outputSegmentation", "device", "startSlice", "firstSlice", "lastSlice", "axis",
            "direction", "maxEmptyRun"} <= set(bound.values())
    assert fields["inputVolume"] == "Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode]"


def test_every_binding_has_a_parameter_node_wrapper_connector():
    """Mirrors the connector rules of Slicer's Base/Python/slicer/parameterNodeWrapper/guiConnectors.py, where a
    wrong pairing fails only at runtime in Slicer: a QComboBox bound to a str needs a Choice annotation (else
    connectGui raises); a QSpinBox bound to an int gets its range from Minimum/Maximum annotations (else the
    minimum becomes -2**31 and the .ui's special value text, such as 'automatic', can never show); QPlainTextEdit
    has no connector at all."""
    fields = _parameter_fields()
    for name, widget in _ui_widgets().items():
        parameter = _property(widget, "SlicerParameterName")
        if parameter is None:
            continue
        cls = widget.get("class")
        base, validators = _annotation(fields[parameter])
        if cls == "qMRMLNodeComboBox":
            types = re.fullmatch(r"Union\[(.*)\]", base)  # a union of node types is supported (getNodeTypes)
            assert all(t.strip().startswith("vtkMRML") for t in (types.group(1) if types else base).split(",")), \
                f"{name}: a node selector needs a node type, not {base}"
        elif cls == "QComboBox":
            assert base in ("str", "int", "float", "bool") and "Choice" in validators, \
                f"{name} -> {parameter}: a QComboBox needs Annotated[{base}, Choice(...)]"
            items = [i.find("property/string").text for i in widget.findall("item")]
            assert not items or items == [str(c) for c in validators["Choice"]], \
                f"{name}: the .ui items {items} differ from the Choice {validators['Choice']}"
        elif cls == "QSpinBox":
            assert base == "int", f"{name}: a QSpinBox binds an int, not {base}"
            ui_minimum = int(_property(widget, "minimum") or 0)
            assert validators.get("Minimum") == ui_minimum, \
                f"{name} -> {parameter}: annotate Minimum({ui_minimum}) or the connector resets the minimum"
        else:
            assert cls in ("QCheckBox", "QLineEdit", "QTextEdit", "QSlider", "QDoubleSpinBox"), \
                f"{name}: parameterNodeWrapper has no connector for {cls}"


def test_combo_box_choices_match_what_the_logic_accepts():
    from TextPromptSegLib.engine.device import pick_device
    from TextPromptSegLib.engine.geometry import SliceGeometry

    constants = _module_constants()
    assert constants["DEVICES"][0] == "auto" and "cpu" in constants["DEVICES"]
    assert str(pick_device("cpu")) == "cpu"
    for axis in constants["AXES"][1:]:
        SliceGeometry.for_volume(np.eye(3), (1.0, 1.0, 1.0), axis)  # raises for a name the engine does not know
    assert constants["AXES"][0] == "auto"
    assert set(constants["DIRECTIONS"]) == {"both", "forward", "backward"}
    fields = _parameter_fields()
    for parameter, default in (("device", "auto"), ("axis", "auto"), ("direction", "both")):
        assert default in _annotation(fields[parameter])[1]["Choice"]


def test_cmake_and_s4ext_agree():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    s4ext = (ROOT / "TextPromptSeg.s4ext").read_text()
    assert "EXTENSION_DEPENDS PyTorch" in cmake.replace('"', "") and re.search(r"^depends\s+PyTorch", s4ext, re.M)
    module_cmake = (ROOT / "TextPromptSeg" / "CMakeLists.txt").read_text()
    assert "TextPromptSegLib" in module_cmake and "Resources" in module_cmake and "TextPromptSegLogic" in module_cmake


def test_extension_metadata_urls_point_at_files_in_this_repository():
    """The icon and screenshot URLs of CMakeLists.txt and the .s4ext (shown by the Extensions Manager) name files that
    exist here, and the two files agree (a broken image or a mismatch is an extension metadata error)."""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    s4ext = (ROOT / "TextPromptSeg.s4ext").read_text()
    urls = {}
    for key, cmake_name in (("iconurl", "EXTENSION_ICONURL"), ("screenshoturls", "EXTENSION_SCREENSHOTURLS")):
        from_cmake = re.search(rf'set\({cmake_name} "([^"]+)"\)', cmake).group(1)
        from_s4ext = re.search(rf"^{key} (\S+)", s4ext, re.M).group(1)
        assert from_cmake == from_s4ext, f"{key}: CMakeLists.txt and the .s4ext differ"
        urls[key] = from_cmake
    for url in urls.values():
        relative = url.split("/main/", 1)[1]
        assert (ROOT / relative).is_file(), f"{url} names {relative}, which is not in the repository"


def _function(name: str, cls: str = "TextPromptSegWidget") -> ast.FunctionDef:
    for node in ast.parse(MODULE.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == name:
                    return item
    raise AssertionError(f"no {cls}.{name}")


def _calls(function: ast.FunctionDef) -> list[str]:
    """Source of each call in ``function``, in source order."""
    calls = [n for n in ast.walk(function) if isinstance(n, ast.Call)]
    return [ast.unparse(c) for c in sorted(calls, key=lambda c: (c.lineno, c.col_offset))]


def test_module_dependencies_name_every_module_the_panel_uses():
    """Segmentations (segment nodes), Sequences (2D+t), Markups (points and box) and Plots (quality strip)."""
    text = MODULE.read_text()
    match = re.search(r"self\.parent\.dependencies = (\[[^\]]*\])", text)
    assert match, "no parent.dependencies"
    assert set(ast.literal_eval(match.group(1))) >= {"Segmentations", "Sequences", "Markups", "Plots"}


def test_input_selector_offers_rgb_vector_volumes_and_no_labelmaps():
    """parameterNodeWrapper's qMRMLNodeComboBox connector sets the selector's nodeTypes from the annotation
    (getNodeTypes), so the annotation decides; the .ui agrees and keeps showChildNodeTypes off (labelmaps, DWI and
    tensor volumes derive from vtkMRMLScalarVolumeNode)."""
    constants = _module_constants()
    assert set(constants["INPUT_NODE_TYPES"]) == {"vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"}
    annotation = ast.parse(_parameter_fields()["inputVolume"], mode="eval").body
    assert getattr(annotation.value, "id", None) == "Union"
    assert {e.id for e in annotation.slice.elts} == set(constants["INPUT_NODE_TYPES"])
    selector = _ui_widgets()["inputVolumeSelector"]
    ui_types = [s.text for s in selector.find("property[@name='nodeTypes']/stringlist")]
    assert set(ui_types) == set(constants["INPUT_NODE_TYPES"])
    assert _property(selector, "showChildNodeTypes") == "false"


def test_no_view_is_looked_up_by_a_fixed_name():
    """The current slice comes from the view of the slicing axis (panel_support.choose_slice_node), never from a
    view named in the code."""
    code = MODULE.read_text()
    widget_code = code[code.index("class TextPromptSegWidget"):code.index("def resourcePath")]
    assert not re.search(r"sliceWidget\(\s*[\"'](Red|Green|Yellow)", widget_code)
    assert not re.search(r"[\"']Red[\"']", widget_code)
    for name in ("onUseCurrentSlice", "onRefine", "onSegment"):
        assert any("_currentSliceIndex" in c for c in _calls(_function(name))), name
    assert "Red view" not in UI.read_text()


def test_model_combo_is_connected_before_its_text_is_set():
    """Setting the text a combo box already shows emits nothing: the signal is connected before the text is set,
    and a new parameter node takes the text the combo shows (test_PanelBindings in a fresh Slicer)."""
    calls = _calls(_function("setup"))
    connect = next(i for i, c in enumerate(calls) if c.startswith("self.ui.modelComboBox.connect('currentTextChanged"))
    set_text = next(i for i, c in enumerate(calls) if c.startswith("self.ui.modelComboBox.setCurrentText"))
    assert connect < set_text
    source = ast.unparse(_function("setParameterNode"))
    assert "node.model = self.ui.modelComboBox.currentText" in source


def test_run_locks_the_panel_and_remembers_its_nodes():
    widgets = _ui_widgets()
    constants = _module_constants()
    locked = set(constants["RUN_LOCKED_WIDGETS"])
    assert locked <= set(widgets)
    assert {"inputVolumeSelector", "outputSegmentationSelector", "modelComboBox", "deviceComboBox", "axisComboBox",
            "sequenceCheckBox", "segmentButton"} <= locked
    poll = ast.unparse(_function("_poll"))
    assert "p.inputVolume" not in poll and "p.outputSegmentation" not in poll, \
        "_poll must use the nodes the run started with"
    assert "self._runVolume" in poll and "self._runSegmentation" in poll
    for name in ("onSegment", "onRefine", "onPointPlaced"):
        calls = _calls(_function(name))
        assert any(c.startswith("self._beginRun(") for c in calls), f"{name} does not start through _beginRun"
        assert not any("self._job =" in c for c in calls)


def test_scene_close_cancels_the_run():
    source = ast.unparse(_function("onSceneStartClose"))
    assert "self._abandonRun()" in source
    abandon = ast.unparse(_function("_abandonRun"))
    assert "cancel.cancel()" in abandon and "self._endRun()" in abandon
    end = ast.unparse(_function("_endRun"))
    assert "self._timer.stop()" in end and "self._job = None" in end and "self._lockForRun(False)" in end


def test_sequence_mode_hides_ignored_options_and_makes_no_unused_node():
    widgets = _ui_widgets()
    constants = _module_constants()
    hidden = set(constants["SEQUENCE_HIDDEN_WIDGETS"]) | set(constants["SEQUENCE_DISABLED_WIDGETS"])
    assert hidden <= set(widgets)
    assert {"directionComboBox", "firstSliceSpinBox", "lastSliceSpinBox", "maxEmptyRunSpinBox", "axisComboBox",
            "positivePointButton", "negativePointButton", "boxButton"} <= hidden
    assert "startSliceSpinBox" not in hidden
    modified = ast.unparse(_function("_onParameterNodeModified"))
    assert "frame_count" in modified
    segment = _function("onSegment")
    sequence_branch = next(n for n in ast.walk(segment)
                           if isinstance(n, ast.If) and ast.unparse(n.test) == "p.sequence")
    assert "AddNewNodeByClass" not in ast.unparse(sequence_branch), "sequence mode creates a segmentation node"
    calls = _calls(segment)
    add = next(i for i, c in enumerate(calls) if "AddNewNodeByClass" in c)
    start_sequence = next(i for i, c in enumerate(calls) if "start_sequence" in c)
    assert start_sequence < add


def test_click_update_points_are_dropped_before_segment():
    calls = _calls(_function("onSegment"))
    drop = next(i for i, c in enumerate(calls) if c == "self._dropClickPoints()")
    collect = next(i for i, c in enumerate(calls) if "collect_visual_prompts" in c)
    assert drop < collect
    assert "_clickPointIds" in ast.unparse(_function("onPointPlaced"))


def test_requirements_match_pyproject():
    """The versions the panel installs and checks are pyproject.toml's constraints."""
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    declared = {re.match(r"[A-Za-z0-9._-]+", d).group().lower(): d.replace(" ", "") for d in project["dependencies"]}
    requirements = _module_constants()["REQUIREMENTS"]
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group().lower()
        assert declared.get(name) == requirement.replace(" ", ""), f"{requirement} differs from pyproject.toml"
    assert any(r.startswith("transformers") for r in requirements)
    source = ast.unparse(next(n for n in ast.parse(MODULE.read_text()).body
                              if isinstance(n, ast.FunctionDef) and n.name == "ensureDependencies"))
    assert "unmet_requirements(REQUIREMENTS)" in source and "unmet_requirements(NO_DEPS_REQUIREMENTS)" in source
    assert "find_spec" not in source, "presence alone does not check the version"


def test_cmake_build_tree_gets_the_packages(tmp_path):
    """Configure and build the module's CMakeLists.txt with the Slicer macro stubbed: TextPromptSegLib,
    TextPromptSegLogic and Resources land beside TextPromptSeg.py in the build tree's module folder, where the
    generic tests (--additional-module-path) import them from."""
    import shutil
    import subprocess
    import sys

    if shutil.which("cmake") is None:
        import pytest

        pytest.skip("cmake is not installed")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "CMakeLists.txt").write_text(f"""
cmake_minimum_required(VERSION 3.16)
project(Stub NONE)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${{ARGN}})
  foreach(f ${{MY_SCRIPTS}})
    configure_file(${{CMAKE_CURRENT_SOURCE_DIR}}/${{f}}
                   ${{CMAKE_BINARY_DIR}}/${{Slicer_QTSCRIPTEDMODULES_LIB_DIR}}/${{f}} COPYONLY)
  endforeach()
endmacro()
add_subdirectory({(ROOT / "TextPromptSeg").as_posix()} module)
""")
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(tmp_path / "src"), "-B", str(build)], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True)
    module_dir = build / "lib" / "Slicer-5.8" / "qt-scripted-modules"
    assert (module_dir / "TextPromptSeg.py").is_file()
    for package in ("TextPromptSegLib", "TextPromptSegLogic"):
        assert (module_dir / package / "__init__.py").is_file(), f"{package} is not in the build tree"
    assert (module_dir / "Resources" / "UI" / "TextPromptSeg.ui").is_file()
    assert (module_dir / "TextPromptSegLogic" / "panel_support.py").is_file()
    found = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('TextPromptSegLib').origin); "
         "print(u.find_spec('TextPromptSegLogic').origin)"],
        cwd=module_dir, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(module_dir)}, capture_output=True, text=True,
        check=True)
    for line in found.stdout.split():
        assert Path(line).resolve().is_relative_to(module_dir.resolve()), line



def test_extra_input_volumes_reach_the_logic_and_lock_with_the_run():
    """Issue 19: a model that reads co-registered sequences gets one selector per extra sequence; Segment passes
    them as ``channel_nodes``, the model combo updates them, and a run locks them."""
    segment_calls = _calls(_function("onSegment"))
    assert any(c.startswith("self.logic.start(") and "channel_nodes=self._channelNodes()" in c
               for c in segment_calls)
    assert "self._updateChannelInputs()" in _calls(_function("onModelChanged"))
    assert "self.logic.channel_sets(self.ui.modelComboBox.currentText or None)" in _calls(
        _function("_updateChannelInputs"))
    assert "self._setupChannelInputs()" in _calls(_function("setup"))
    lock = ast.unparse(_function("_lockForRun"))
    assert "_channelSelectors" in lock and "selector.enabled = not running" in lock
