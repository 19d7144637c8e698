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
    assert fields["inputVolume"] == "vtkMRMLScalarVolumeNode"


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
            assert base.startswith("vtkMRML"), f"{name}: a node selector needs a node type, not {base}"
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
