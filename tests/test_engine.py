

def test_encoding_a_stream_longer_than_the_window_does_not_warn(capfd) -> None:
    """Streams longer than the base model's window are the normal case (they are cut into chunks): the
    tokenizer's "longer than the specified maximum sequence length ... indexing errors" warning must not appear."""
    from comet_agents.engine import MemoryEngine

    from tiny import tiny_chat_model

    model = tiny_chat_model(chunk_size=64)
    model.tokenizer.model_max_length = 32
    model.tokenizer.deprecation_warnings.clear()
    capfd.readouterr()
    ids = MemoryEngine(model).encode("a b c " * 40)
    assert len(ids) > 32
    assert "maximum sequence length" not in capfd.readouterr().err
    model.tokenizer("a b c " * 40, add_special_tokens=False)  # the warning this guards against, to prove it shows
    assert "maximum sequence length" in capfd.readouterr().err
