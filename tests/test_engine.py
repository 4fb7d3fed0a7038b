

def test_encoding_a_stream_longer_than_the_window_does_not_warn() -> None:
    """Streams longer than the base model's window are the normal case (they are cut into chunks): the
    tokenizer's "longer than the specified maximum sequence length ... indexing errors" warning must not appear."""
    import logging

    from transformers.utils import logging as hf_logging

    from comet_agents.engine import MemoryEngine

    from tiny import tiny_chat_model

    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    library = hf_logging.get_logger()  # transformers' root logger, whatever earlier tests did to its stream
    handler, level = Collect(level=logging.WARNING), library.level
    library.addHandler(handler)
    library.setLevel(logging.WARNING)
    try:
        model = tiny_chat_model(chunk_size=64)
        model.tokenizer.model_max_length = 32
        model.tokenizer.deprecation_warnings.clear()
        ids = MemoryEngine(model).encode("a b c " * 40)
        assert len(ids) > 32
        assert not [m for m in seen if "maximum sequence length" in m]
        model.tokenizer("a b c " * 40, add_special_tokens=False)  # the warning guarded against, to prove it shows
        assert [m for m in seen if "maximum sequence length" in m]
    finally:
        library.removeHandler(handler)
        library.setLevel(level)
