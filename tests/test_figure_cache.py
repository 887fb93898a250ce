"""Static images are kept by content: the same figure is not rendered twice, a different one is."""

import plotly.graph_objects as go

from workbench import results


def test_same_figure_is_read_back_not_rendered_again(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_render(fig, formats, scale):
        calls.append(formats)
        return {fmt: f"{fmt}:{fig.layout.title.text}".encode() for fmt in formats}

    monkeypatch.setattr(results, "render_images", fake_render)
    def make(title):  # a figure built again by the same code, as a second run builds it
        return go.Figure(go.Scatter(x=[0, 1], y=[1, 0]), layout=dict(title=title))

    first = results.figure_images(make("a"), ("png", "svg"))
    again = results.figure_images(make("a"), ("png", "svg"))
    assert first == again == {"png": b"png:a", "svg": b"svg:a"} and len(calls) == 1
    other = results.figure_images(make("b"), ("png",))
    assert other == {"png": b"png:b"} and len(calls) == 2
    assert sorted(p.suffix for p in (tmp_path / "cache" / "figures").iterdir()) == [".png", ".png", ".svg"]
