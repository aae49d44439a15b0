import pytest

from service.runtime import session_options


def test_intra_op_threads_do_not_spin_by_default():
    options = session_options(2)
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_spinning_can_be_allowed():
    options = session_options(allow_spinning=True)
    # ONNX Runtime's own default (spinning on) applies: the entry is not set at all.
    with pytest.raises(Exception, match="allow_spinning"):
        options.get_session_config_entry("session.intra_op.allow_spinning")
