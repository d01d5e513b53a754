"""Evaluation texts: WikiText windows and the HellaSwag file format."""

from __future__ import annotations

import pytest

from splitcomp.llm.text import ByteTokenizer, read_hellaswag, token_windows


@pytest.mark.requires_shared_data
def test_real_hellaswag_format(shared_path) -> None:
    items = read_hellaswag(shared_path("text", "hellaswag_val_full.txt.bz2"), 3)
    assert [i.label for i in items] == [3, 3, 2]
    assert items[0].context == "Roof shingle removal: A man is sitting on a roof. he"
    assert items[0].endings[3] == "starts pulling up roofing on a roof."


def test_windows_and_bad_files(tmp_path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("abcdefghij" * 10)
    w = token_windows(ByteTokenizer(), text, 8, 12)
    assert w.shape == (12, 8) and bytes(w[1].tolist()) == b"ijabcdef"
    with pytest.raises(ValueError, match="need 104"):
        token_windows(ByteTokenizer(), text, 8, 13)
    bad = tmp_path / "hs.txt"
    bad.write_text("ctx\nx\na\nb\nc\nd\n")
    with pytest.raises(ValueError, match="gold index"):
        read_hellaswag(bad, 1)
