"""A model's identity is its content: same bytes, same id, wherever the file lies; other bytes, another id."""

from wastenet.model_identity import model_id


def test_the_id_is_a_content_hash_independent_of_the_path(tmp_path):
    a, b, c = tmp_path / "a.pt", tmp_path / "sub" / "b.pt", tmp_path / "c.pt"
    b.parent.mkdir()
    a.write_bytes(b"weights-1" * 1000)
    b.write_bytes(b"weights-1" * 1000)
    c.write_bytes(b"weights-2" * 1000)
    assert model_id(a) == model_id(b)
    assert model_id(a) != model_id(c)
    assert model_id(a).startswith("sha256:") and len(model_id(a)) == len("sha256:") + 16
