"""`inv disk`'s pure parts: Docker's human sizes, the image rows, the report text."""

import json

import pytest

from onevps import disk


@pytest.mark.parametrize("text, n", [("0B", 0), ("185.5MB", 185_500_000), ("14.07kB", 14_070), ("1.6GB", 1_600_000_000),
                                     ("512B", 512)])
def test_parse_size(text, n):
    assert disk.parse_size(text) == n


def test_parse_size_refuses_garbage():
    with pytest.raises(ValueError):
        disk.parse_size("lots")


def test_image_rows_keep_only_the_namespace():
    df = json.dumps({"Images": [
        {"Repository": "onevps/kb", "Tag": "latest", "Size": "186MB", "UniqueSize": "26.4kB", "SharedSize": "185.5MB"},
        {"Repository": "nginx", "Tag": "1.27-bookworm", "Size": "95MB", "UniqueSize": "20MB", "SharedSize": "75MB"},
        {"Repository": "onevps-test/kb", "Tag": "latest", "Size": "186MB", "UniqueSize": "0B", "SharedSize": "186MB"},
    ]})
    rows = disk.image_rows(df, "onevps")
    assert [(r.image, r.size, r.unique, r.shared) for r in rows] == [("onevps/kb:latest", 186_000_000, 26_400,
                                                                      185_500_000)]


def test_render_marks_apps_over_budget_and_lists_their_files():
    data = {"images": [], "tiers": {"base": 185_500_000, "ml_own": 1_400_000_000}, "budget": 5_000_000,
            "apps": [{"app": "kb", "tier": "base", "own": 26_400, "over_budget": False, "largest": []},
                     {"app": "fat", "tier": "base", "own": 9_000_000, "over_budget": True,
                      "largest": ["/app/model.bin (8.9 MB)"]}],
            "on_disk": 1_600_000_000, "unlayered": 5_500_000_000, "savings_ratio": 3.44}
    text = disk.render(data)
    assert "fat                base      9.0 MB  OVER BUDGET" in text
    assert "    /app/model.bin (8.9 MB)" in text
    assert text.endswith("on disk 1.6 GB, unlayered 5.5 GB, savings 3.44x")
