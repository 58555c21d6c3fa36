"""Pictures for `vlm.inspect`: figure data first, then a PNG (Pillow only) and an offline HTML page (plotly).

The PNG needs no browser or kaleido, so it is written on any machine; the HTML page carries plotly.js inline
and works offline. Colours follow viridis; each figure is scaled to its own largest value (printed on it).
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from vlm.atomic import write_text
from vlm.inspection import AttentionMap, InspectPrompt, LogitLens, token_label

# viridis at five stops (matplotlib's values); linear in between.
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
_PLOTLY_JS = True  # include_plotlyjs: the page works offline


def colour(value: float) -> tuple[int, int, int]:
    """viridis colour of a value in [0, 1]."""
    x = min(max(value, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(x), len(_VIRIDIS) - 2)
    t = x - i
    a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
    return tuple(round(a[c] + (b[c] - a[c]) * t) for c in range(3))


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def view_image(prompt: InspectPrompt, view: int) -> Image.Image:
    """View `view` of the prompt as an RGB image (what the ViT saw)."""
    pixels = (prompt.images[view].clamp(0, 1) * 255).round().to(torch.uint8)  # [3, S, S]
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")


def _scaled(image: Image.Image, size: int) -> Image.Image:
    # Integer upscaling of the demo's 64-px views keeps their pixels sharp; anything else is resampled.
    exact = size % image.width == 0 and size >= image.width
    return image.resize((size, size), Image.NEAREST if exact else Image.BICUBIC)


def heat_image(grid: torch.Tensor, vmax: float, size: int) -> Image.Image:
    """A [side, side] value grid as a `size` x `size` viridis image (NaN cells, tokens a student dropped, grey)."""
    side = grid.shape[0]
    image = Image.new("RGB", (side, side))
    for r in range(side):
        for c in range(side):
            value = float(grid[r, c])
            missing = math.isnan(value)
            image.putpixel((c, r), (225, 225, 225) if missing else colour(value / vmax if vmax > 0 else 0.0))
    return image.resize((size, size), Image.NEAREST)


def _colour_bar(draw: ImageDraw.ImageDraw, x: int, y: int, width: int, vmax: float, font) -> None:
    for i in range(width):
        draw.line([(x + i, y), (x + i, y + 10)], fill=colour(i / max(width - 1, 1)))
    draw.text((x, y + 12), "0", fill="black", font=font)
    label = f"{vmax:.3g}"
    draw.text((x + width - draw.textlength(label, font=font), y + 12), label, fill="black", font=font)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _save_png(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return path


# ----- attention ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewPanel:
    """One view: its pixels, the name, where it sits in the crop grid (None for the global view), and the
    attention from each question token to its image tokens, per token [Q, tokens] and on the grid [Q, k, k]."""

    name: str
    image: Image.Image
    crop_cell: tuple[int, int] | None
    per_token: torch.Tensor
    on_grid: torch.Tensor
    cell_names: tuple[str, ...]


@dataclass(frozen=True)
class AttentionFigureData:
    title: str
    question_labels: tuple[str, ...]
    panels: tuple[ViewPanel, ...]
    crop_grid: tuple[int, int]
    vmax: float  # colour scale of single question tokens (the matrix, the small maps)
    mean_vmax: (
        float  # colour scale of the mean over the question's tokens (one token's peak would wash it out)
    )


def attention_figure_data(
    amap: AttentionMap, prompt: InspectPrompt, views: list[int], model_name: str = ""
) -> AttentionFigureData:
    """What the attention pictures show: question tokens x image tokens for each of `views`."""
    if not prompt.question_positions:
        raise ValueError("the question has no tokens in the prompt; ask a non-empty question")
    names = prompt.view_names()
    cols = prompt.grid[1]
    panels = []
    for view in views:
        values = amap.question_to_view(prompt, view)  # [Q, tokens]
        crop = None if names[view] == "global" else divmod(view - 1, cols)
        panels.append(
            ViewPanel(
                name=names[view],
                image=view_image(prompt, view),
                crop_cell=crop,
                per_token=values,
                on_grid=amap.on_grid(values, view),  # [Q, k, k]
                cell_names=tuple(
                    f"{names[view]} ({c // amap.grid_side},{c % amap.grid_side})"
                    for c in amap.cells[view].tolist()
                ),
            )
        )
    labels = tuple(f"{i}: {prompt.labels[i]}" for i in prompt.question_positions)
    vmax = max(float(p.per_token.max()) for p in panels)
    mean_vmax = max(float(p.per_token.mean(0).max()) for p in panels)
    title = f"{model_name} · decoder block {amap.layer}, head {amap.head} · question -> image tokens"
    return AttentionFigureData(title, labels, tuple(panels), prompt.grid, vmax, mean_vmax)


def attention_png(data: AttentionFigureData, path: Path) -> Path:
    """Each view beside the question's mean attention on its token grid, the token matrix, and one small map
    per question token (global view)."""
    font, small = _font(13), _font(11)
    view_size = 256
    global_panel = data.panels[0]
    crops = [p for p in data.panels if p.crop_cell is not None]
    rows, cols = data.crop_grid
    crop_size = view_size // rows if crops else 0
    mean = [torch.nanmean(p.on_grid, dim=0) for p in data.panels]  # [k, k] each

    n_tokens = sum(p.per_token.shape[1] for p in data.panels)
    cell_w = max(2, min(10, 760 // n_tokens))
    cell_h = 16
    label_w = 120
    q = len(data.question_labels)
    side = global_panel.on_grid.shape[-1]
    small_cell = max(4, 88 // side)
    small_size = small_cell * side
    per_row = max(1, 900 // (small_size + 16))

    gap = 2
    mosaic_w = cols * (crop_size + gap)
    matrix_w = label_w + n_tokens * cell_w + 4 * len(data.panels)
    width = max(matrix_w, 2 * (view_size + 16), 2 * (mosaic_w + 16), per_row * (small_size + 16)) + 24
    small_rows = math.ceil(q / per_row)
    view_rows = 2 if crops else 1
    height = 40 + view_rows * (view_size + 26) + 16 + q * cell_h + 40 + small_rows * (small_size + 34) + 40
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((12, 10), data.title, fill="black", font=font)

    # The view, and beside it the attention on its token grid (mean over the question's tokens).
    y = 36
    canvas.paste(_scaled(global_panel.image, view_size), (12, y))
    canvas.paste(heat_image(mean[0], data.mean_vmax, view_size), (12 + view_size + 16, y))
    draw.text((12, y + view_size + 4), "global view", fill="black", font=small)
    draw.text(
        (12 + view_size + 16, y + view_size + 4),
        f"mean over the question's tokens (colour 0 .. {data.mean_vmax:.3g})",
        fill="black",
        font=small,
    )
    y += view_size + 26
    if crops:
        for panel, grid in zip(data.panels, mean):
            if panel.crop_cell is None:
                continue
            r, c = panel.crop_cell
            at_x, at_y = 12 + c * (crop_size + gap), y + r * (crop_size + gap)
            canvas.paste(_scaled(panel.image, crop_size), (at_x, at_y))
            canvas.paste(heat_image(grid, data.mean_vmax, crop_size), (at_x + mosaic_w + 16, at_y))
        draw.text((12, y + view_size + 4), "crops", fill="black", font=small)
        draw.text((12 + mosaic_w + 16, y + view_size + 4), "their token grids", fill="black", font=small)
        y += view_size + 26

    draw.text((12, y), "each question token (rows) to each image token (columns)", fill="black", font=small)
    y += 16
    x0 = 12 + label_w
    for row, label in enumerate(data.question_labels):
        draw.text((12, y + row * cell_h + 1), _fit(draw, label, label_w - 6, small), fill="black", font=small)
    x = x0
    for panel in data.panels:
        values = panel.per_token
        for row in range(values.shape[0]):
            for col in range(values.shape[1]):
                fill = colour(float(values[row, col]) / data.vmax if data.vmax > 0 else 0.0)
                draw.rectangle(
                    [
                        x + col * cell_w,
                        y + row * cell_h,
                        x + (col + 1) * cell_w - 1,
                        y + (row + 1) * cell_h - 1,
                    ],
                    fill=fill,
                )
        x += values.shape[1] * cell_w + 4
    y += q * cell_h + 6
    _colour_bar(draw, x0, y, 160, data.vmax, small)
    y += 34

    global_vmax = float(global_panel.per_token.max())
    draw.text(
        (12, y),
        f"global view, one map per question token (colour 0 .. {global_vmax:.3g})",
        fill="black",
        font=small,
    )
    y += 16
    for i, label in enumerate(data.question_labels):
        r, c = divmod(i, per_row)
        x = 12 + c * (small_size + 16)
        yy = y + r * (small_size + 34)
        draw.text((x, yy), _fit(draw, label, small_size + 12, small), fill="black", font=small)
        canvas.paste(heat_image(global_panel.on_grid[i], global_vmax, small_size), (x, yy + 16))
    return _save_png(canvas, path)


def _image_and_overlay(
    fig, panel_image: Image.Image, grid: torch.Tensor, size: int, row: int, col: int, **heat
):
    import plotly.graph_objects as go

    side = grid.shape[-1]
    centres = [(i + 0.5) * size / side for i in range(side)]
    fig.add_trace(
        go.Image(source=_png_data_uri(_scaled(panel_image, size)), hoverinfo="skip"), row=row, col=col
    )
    z = [[None if math.isnan(v) else v for v in r] for r in grid.tolist()]
    fig.add_trace(go.Heatmap(z=z, x=centres, y=centres, opacity=0.6, **heat), row=row, col=col)
    fig.update_xaxes(visible=False, row=row, col=col)
    # Square pixels: the y axis keeps the x axis's scale.
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor=fig.data[-1].xaxis, row=row, col=col)


def attention_html(data: AttentionFigureData, path: Path) -> Path:
    """Interactive page: the views with a selectable question token's attention, and the token matrix."""
    return _write_html(attention_figure(data), path)


def _write_html(fig, path: Path) -> Path:
    import plotly.io as pio

    return write_text(path, pio.to_html(fig, full_html=True, include_plotlyjs=_PLOTLY_JS))


def attention_figure(data: AttentionFigureData):
    """The plotly figure of `attention_html`."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows, cols = data.crop_grid
    crops = [p for p in data.panels if p.crop_cell is not None]
    view_rows = rows if crops else 1
    n_cols = 1 + (cols if crops else 0)
    # Row 1..view_rows: the global view (spanning them) and the crops on their grid; last row: the matrix.
    specs = [[{"rowspan": view_rows} if r == 0 else None] + [{}] * (n_cols - 1) for r in range(view_rows)]
    specs.append([{"colspan": n_cols}] + [None] * (n_cols - 1))
    fig = make_subplots(
        rows=len(specs),
        cols=n_cols,
        specs=specs,
        row_heights=[1.0 / view_rows] * view_rows + [max(0.6, 0.08 * len(data.question_labels))],
        vertical_spacing=0.06,
        horizontal_spacing=0.02,
    )
    heat = dict(
        colorscale="Viridis",
        zmin=0,
        zmax=data.mean_vmax,
        showscale=False,
        hovertemplate="%{z:.4f}<extra></extra>",
    )
    overlay_traces = []
    for panel in data.panels:
        mean = torch.nanmean(panel.on_grid, dim=0)
        if panel.crop_cell is None:
            at = (1, 1)
            size = 256
        else:
            at = (panel.crop_cell[0] + 1, panel.crop_cell[1] + 2)
            size = 256 // rows
        _image_and_overlay(fig, panel.image, mean, size, *at, **heat)
        overlay_traces.append(len(fig.data) - 1)
    x_labels = [name for panel in data.panels for name in panel.cell_names]
    matrix = torch.cat([panel.per_token for panel in data.panels], dim=1)  # [Q, all image tokens]
    fig.add_trace(
        go.Heatmap(
            z=matrix.tolist(),
            x=list(range(len(x_labels))),
            y=list(data.question_labels),
            customdata=[x_labels] * matrix.shape[0],
            colorscale="Viridis",
            zmin=0,
            zmax=data.vmax,
            colorbar={"title": "attention", "len": 0.3, "y": 0.15},
            hovertemplate="%{y} -> %{customdata}: %{z:.4f}<extra></extra>",
        ),
        row=len(specs),
        col=1,
    )
    fig.update_yaxes(autorange="reversed", row=len(specs), col=1)
    fig.update_xaxes(title_text="image token (view, grid row, grid column)", row=len(specs), col=1)

    def restyle(choice: int | None) -> dict:
        """The overlays' values and shared colour scale for the mean (None) or one question token."""
        grids = [
            torch.nanmean(p.on_grid, dim=0) if choice is None else p.on_grid[choice] for p in data.panels
        ]
        top = max(float(g.nan_to_num(0.0).max()) for g in grids)
        z = [[[None if math.isnan(v) else v for v in r] for r in g.tolist()] for g in grids]
        return {"z": z, "zmax": [top] * len(grids)}

    buttons = [
        {"label": "mean over question tokens", "method": "restyle", "args": [restyle(None), overlay_traces]}
    ]
    buttons += [
        {"label": label, "method": "restyle", "args": [restyle(i), overlay_traces]}
        for i, label in enumerate(data.question_labels)
    ]
    fig.update_layout(
        title=data.title,
        height=420 + 22 * len(data.question_labels),
        width=max(900, 320 + 200 * (n_cols - 1)),
        updatemenus=[{"buttons": buttons, "x": 0.0, "y": 1.08, "xanchor": "left", "showactive": True}],
        margin={"t": 110},
    )
    return fig


# ----- logit lens -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LensFigureData:
    """Per inspected depth: the top-1 word, its probability and the top-k list of every grid cell."""

    title: str
    image: Image.Image
    layers: tuple[int, ...]
    n_blocks: int
    words: dict[int, list[list[str]]]
    probs: dict[int, torch.Tensor]
    lists: dict[int, list[list[str]]]


def lens_figure_data(
    lens: LogitLens, tokenizer, prompt: InspectPrompt, model_name: str = ""
) -> LensFigureData:
    """Lay the logit lens of the global view's image tokens (`lens.positions`) out on the token grid."""
    side = lens.grid_side
    cells = lens.cells[0].tolist()
    if len(cells) != len(lens.positions):
        raise ValueError(
            "the lens must be taken at the global view's image tokens (prompt.image_positions[0])"
        )
    words, probs, lists = {}, {}, {}
    for layer in lens.ids:
        w = [["" for _ in range(side)] for _ in range(side)]
        pr = torch.full((side, side), float("nan"))
        li = [["" for _ in range(side)] for _ in range(side)]
        for index, cell in enumerate(cells):
            r, c = divmod(cell, side)
            ids, ps = lens.ids[layer][index].tolist(), lens.probs[layer][index].tolist()
            w[r][c] = token_label(tokenizer, ids[0])
            pr[r, c] = ps[0]
            li[r][c] = "<br>".join(f"{token_label(tokenizer, t)} {p:.3g}" for t, p in zip(ids, ps))
        words[layer], probs[layer], lists[layer] = w, pr, li
    title = f"{model_name} · logit lens on the global view's image tokens (top-1 token, its probability)"
    return LensFigureData(title, view_image(prompt, 0), tuple(lens.ids), lens.n_blocks, words, probs, lists)


def lens_png(data: LensFigureData, path: Path) -> Path:
    """One panel per depth: the global view with each token cell's top-1 word and probability."""
    side = len(next(iter(data.words.values())))
    cell = max(48, 512 // side)
    size = cell * side
    font, word_font, prob_font = (
        _font(14),
        _font(max(9, min(14, cell // 5))),
        _font(max(8, min(11, cell // 6))),
    )
    width = 12 + len(data.layers) * (size + 16)
    height = 36 + 22 + size + 12
    canvas = Image.new("RGB", (max(width, 600), height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((12, 10), data.title, fill="black", font=font)
    for i, layer in enumerate(data.layers):
        x0, y0 = 12 + i * (size + 16), 58
        draw.text((x0, 36), f"after {layer} of {data.n_blocks} decoder blocks", fill="black", font=font)
        panel = _scaled(data.image, size).convert("RGBA")
        boxes = Image.new("RGBA", panel.size, (0, 0, 0, 0))
        box_draw = ImageDraw.Draw(boxes)
        texts = []
        for r in range(side):
            for c in range(side):
                box_draw.rectangle(
                    [c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1], outline=(0, 0, 0, 70)
                )
                word = data.words[layer][r][c]
                if not word:
                    continue
                word = _fit(box_draw, word, cell - 8, word_font)
                prob = f"{float(data.probs[layer][r, c]):.2g}"
                x, y = c * cell + 3, r * cell + 3
                right = x + max(
                    box_draw.textlength(word, font=word_font), box_draw.textlength(prob, font=prob_font)
                )
                # A white box behind the text only, so the image stays visible around it.
                box_draw.rectangle([x - 1, y - 1, right + 2, y + cell // 2 + 12], fill=(255, 255, 255, 185))
                texts.append(((x, y), word, (x, y + cell // 2 - 1), prob))
        panel = Image.alpha_composite(panel, boxes).convert("RGB")
        panel_draw = ImageDraw.Draw(panel)
        for word_at, word, prob_at, prob in texts:
            panel_draw.text(word_at, word, fill="black", font=word_font)
            panel_draw.text(prob_at, prob, fill=(70, 70, 70), font=prob_font)
        canvas.paste(panel, (x0, y0))
    return _save_png(canvas, path)


def lens_html(data: LensFigureData, path: Path) -> Path:
    """Interactive page: per depth, the global view with each cell's top-1 word; hover lists the top k."""
    return _write_html(lens_figure(data), path)


def lens_figure(data: LensFigureData):
    """The plotly figure of `lens_html`."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    side = len(next(iter(data.words.values())))
    size = 384
    centres = [(i + 0.5) * size / side for i in range(side)]
    fig = make_subplots(
        rows=1,
        cols=len(data.layers),
        subplot_titles=[f"after {layer} of {data.n_blocks} decoder blocks" for layer in data.layers],
        horizontal_spacing=0.03,
    )
    for i, layer in enumerate(data.layers, start=1):
        fig.add_trace(
            go.Image(source=_png_data_uri(_scaled(data.image, size)), hoverinfo="skip"), row=1, col=i
        )
        z = [[None if math.isnan(v) else v for v in r] for r in data.probs[layer].tolist()]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=centres,
                y=centres,
                text=data.words[layer],
                customdata=data.lists[layer],
                texttemplate="%{text}",
                opacity=0.35,
                colorscale="Viridis",
                zmin=0,
                zmax=1,
                showscale=i == len(data.layers),
                colorbar={"title": "top-1 p"},
                hovertemplate="%{customdata}<extra></extra>",
            ),
            row=1,
            col=i,
        )
        fig.update_xaxes(visible=False, row=1, col=i)
        fig.update_yaxes(visible=False, autorange="reversed", scaleanchor=fig.data[-1].xaxis, row=1, col=i)
    fig.update_layout(title=data.title, height=540, width=max(700, 460 * len(data.layers)))
    return fig
