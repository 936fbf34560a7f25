"""How messages name settings: the library's parameter names, or the command's options."""

from __future__ import annotations

import pytest

from heatmap_cli.errors import InputTooLargeError, command_line_names, setting
from heatmap_cli.pipeline.limits import check_input_size


def test_settings_are_named_as_parameters_outside_the_command():
    assert setting("max_input_pixels") == "max_input_pixels"
    with command_line_names({"max_display_side": "--max-overlay-side"}):
        assert setting("max_input_pixels") == "--max-input-pixels"
        assert setting("max_display_side") == "--max-overlay-side"
    assert setting("max_display_side") == "max_display_side"


def test_a_library_error_says_the_parameter_and_the_command_says_the_flag():
    def refused() -> str:
        with pytest.raises(InputTooLargeError) as caught:
            check_input_size((4000, 4000), (4000, 4000), max_pixels=1000, max_aspect=32)
        return str(caught.value)

    assert "(max_input_pixels raises it; a smaller size lowers the input)" in refused()
    with command_line_names():
        assert "(--max-input-pixels raises it; a smaller --size lowers the input)" in refused()


def test_the_spelling_is_restored_after_an_error_inside_the_command():
    with pytest.raises(RuntimeError), command_line_names():
        raise RuntimeError
    assert setting("top_k") == "top_k"
