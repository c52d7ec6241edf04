"""wastenet.files: the one atomic write (mode 0644 whatever the umask; nothing left on failure)."""

from __future__ import annotations

import os
import stat

import pytest

from wastenet.files import atomic_path, write_atomic, write_csv_atomic


def test_every_kind_of_content_lands_whole_with_mode_0644(tmp_path):
    old = os.umask(0o077)
    try:
        for name, content in (("a.txt", "ünï\n"), ("b.bin", b"\x00\x01"), ("c.bin", lambda f: f.write(b"xyz"))):
            path = write_atomic(tmp_path / "sub" / name, content)
            assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "a.txt").read_text(encoding="utf-8") == "ünï\n"
    assert (tmp_path / "sub" / "c.bin").read_bytes() == b"xyz"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("parity check failed")
    assert target.read_text() == "good" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_csv_rows_land_with_their_header_and_a_bad_row_keeps_the_old_file(tmp_path):
    target = write_csv_atomic(tmp_path / "h.csv", [{"epoch": 1, "loss": 0.5}, {"epoch": 2}], ["epoch", "loss"],
                              restval="")
    assert target.read_text().splitlines() == ["epoch,loss", "1,0.5", "2,"]
    with pytest.raises(ValueError):  # a key the header lacks: refused, the old file stays whole
        write_csv_atomic(target, [{"epoch": 3, "extra": 1}], ["epoch", "loss"])
    assert target.read_text().splitlines()[-1] == "2,"
    write_csv_atomic(target, [{"epoch": 3, "extra": 1}], ["epoch"], extrasaction="ignore")
    assert target.read_text().splitlines() == ["epoch", "3"]
