"""The prompt library: valid entries, the 20 TPP benchmark structures, and matching of typed text."""

from __future__ import annotations

import subprocess
import sys

import pytest

from TextPromptSegLib.prompts import describe, load_library, match_prompt, normalize


def test_library_entries_are_complete():
    library = load_library()
    assert len({e.id for e in library}) == len(library)
    assert sum(e.tpp_benchmark for e in library) == 20
    for entry in library:
        assert set(entry.prompts) == {"profile", "shape", "colour"} and all(entry.prompts.values())
        assert all(0 <= c <= 1 for c in entry.color) and len(entry.color) == 3
        assert entry.terminology["type"]["code"].isdigit() and entry.terminology["category"]["code"].isdigit()
        assert entry.terminology_tag.count("~") == 6
    names = {e.name for e in library}
    assert {"Left atrium", "Soft-tissue sarcoma", "Necrosis", "Edema", "Enhancing tumour", "Whole tumour",
            "Polyp", "Liver", "Spleen"} <= names


@pytest.mark.parametrize("text,name,how", [
    ("the spleen", "Spleen", "name"),
    ("Spleen.", "Spleen", "name"),
    ("splenic", "Spleen", "synonym"),
    ("Brain tumors", "Brain tumour", "name"),
    ("peritumoral edema", "Edema", "synonym"),
    ("LA", "Left atrium", "synonym"),
    ("a polyp, a reddish protrusion from the colon wall", "Polyp", "contains"),
    ("the left kidney", "Left kidney", "name"),
])
def test_matching(text, name, how):
    match = match_prompt(text)
    assert match.entry is not None and match.entry.name == name and match.how == how
    assert describe(match) == f"{name} ({how})"


def test_free_text_and_normalisation():
    assert match_prompt("a strange blob").entry is None and describe(match_prompt("")) == "free text"
    assert normalize("The Tumors, of the LIVER!") == "tumour liver"


def test_prompts_module_imports_no_torch():
    code = "import sys, TextPromptSegLib.prompts as p; p.load_library(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


def test_tpp_prompt_lines_and_their_echo():
    from TextPromptSegLib.prompts import describe_line, prompt_set, structure_text

    line = "the left atrium; a rounded sac; a bright blood pool"
    assert prompt_set(line) == ["the left atrium", "a rounded sac", "a bright blood pool"]
    assert structure_text(line) == "the left atrium"
    library = prompt_set("the left atrium")  # the name, then the library's profile and shape descriptions
    assert len(library) == 3 and library[0] == "the left atrium"
    assert library[1].startswith("the left atrium, the chamber")
    assert describe_line(line, tpp=True).startswith("Left atrium (name); TPP reads 3 prompt(s) (as typed)")
    assert describe_line("the left atrium", tpp=False) == "Left atrium (name)"
    assert "1 to 3 prompts" in describe_line("a; b; c; d", tpp=True)
