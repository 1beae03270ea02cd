"""clipforge.explain: where in an image a text (or any query vector) matches.

    from clipforge.explain import explain, render_explanation
    ex = explain("runs/demo/final", "photo.jpg", ["a cat", "a sofa"])   # Explanation: maps (T, h, w), scores
    ex.upsampled()                                                      # (T, H, W) at the image's own size
    render_explanation("photo.jpg", ex, "map.png")                      # one panel per text, with a legend

Methods: `maskclip` / `tokens` (dense features, `models.dense`: the cosine of each cell with the text) and
`gradcam` (Grad-CAM of the pooled cosine); `auto` is the tower's dense default. docs/explain.md has the
methods, their sources and their measured localisation.
"""
from clipforge.explain.maps import EXPLAIN_METHODS, MAX_TEXTS, Explanation, explain, explain_vectors, heatmaps
from clipforge.explain.render import EXPLAIN_KIND, heat_overlay, render_explanation

__all__ = ["EXPLAIN_METHODS", "MAX_TEXTS", "Explanation", "explain", "explain_vectors", "heatmaps", "EXPLAIN_KIND",
           "heat_overlay", "render_explanation"]
