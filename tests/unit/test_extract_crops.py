"""veracity.extract's crop boxes (the stage itself runs in tests/integration/test_extract.py)."""

from __future__ import annotations

import pytest

from veracity.extract import _even_if_large
from veracity.media.decode import SHRINK_FIRST

SIZE = 32  # boxes over SHRINK_FIRST * 32 px get even edges


@pytest.mark.parametrize("side", [SHRINK_FIRST * SIZE + 1, SHRINK_FIRST * SIZE + 2, SHRINK_FIRST * SIZE + 9])
@pytest.mark.parametrize("corner", [(101, 33), (100, 32), (-7, 5), (2, -3)])
def test_a_large_crop_box_gets_even_edges_within_a_pixel_and_stays_square(side: int, corner: tuple[int, int]) -> None:
    box = (*corner, corner[0] + side, corner[1] + side)
    out = _even_if_large(box, SIZE)
    x0, y0, x1, y1 = out
    assert not any(v % 2 for v in out) and x1 - x0 == y1 - y0
    assert all(abs(a - b) <= 1 for a, b in zip(out, box, strict=True))


def test_a_crop_box_up_to_shrink_first_times_the_crop_is_left_as_it_is() -> None:
    box = (3, 5, 3 + SHRINK_FIRST * 64, 5 + SHRINK_FIRST * 64)
    assert _even_if_large(box, 64) == box
    assert _even_if_large((3, 5, 131, 133), 64) == (3, 5, 131, 133)  # the 128 px corpus's largest
    assert _even_if_large((1, 1, 1 + SHRINK_FIRST * 8 + 1, 1 + SHRINK_FIRST * 8 + 1), 8) == (0, 0, 34, 34)
