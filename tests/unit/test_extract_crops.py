"""veracity.extract's crop boxes (the stage itself runs in tests/integration/test_extract.py)."""

from __future__ import annotations

import pytest

from veracity.extract import _even_if_large
from veracity.media.decode import SHRINK_FIRST


@pytest.mark.parametrize("box", [(101, 33, 230, 162), (100, 32, 229, 161), (-7, 5, 130, 142), (2, 4, 132, 134)])
def test_a_large_crop_box_gets_even_edges_within_a_pixel_and_stays_square(box: tuple[int, int, int, int]) -> None:
    out = _even_if_large(box, 64)
    x0, y0, x1, y1 = out
    assert not any(v % 2 for v in out) and x1 - x0 == y1 - y0
    assert all(abs(a - b) <= 1 for a, b in zip(out, box, strict=True))


def test_a_crop_box_up_to_twice_the_crop_is_left_as_it_is() -> None:
    box = (3, 5, 3 + SHRINK_FIRST * 64, 5 + SHRINK_FIRST * 64)  # the training corpus's largest
    assert _even_if_large(box, 64) == box
    assert _even_if_large((1, 1, 40, 40), 16) == (0, 0, 40, 40)
