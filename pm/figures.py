"""A small line plot and panels side by side, drawn with PIL (the image grids are common/figures.py's)."""
import math

from PIL import Image, ImageDraw, ImageFont

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e")


def _ticks(low, high, count=4):
    return [low + (high - low) * k / (count - 1) for k in range(count)]


def line_panel(title, x_label, x_values, series, size=(340, 260)):
    """One panel: each of `series` {name: [y per x]} as a line over evenly spaced categorical x positions."""
    width, height = size
    left, right, top, bottom = 64, 12, 24, 48
    values = [y for ys in series.values() for y in ys if math.isfinite(y)]
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or abs(high) * 0.1 or 1.0
    low, high = low - pad, high + pad
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=11)
    x_of = lambda k: left + (width - left - right) * (k + 0.5) / len(x_values)
    y_of = lambda y: top + (height - top - bottom) * (high - y) / (high - low)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((left, 5), title, fill="black", font=font)
    for tick in _ticks(low, high):
        draw.line([left - 4, y_of(tick), left, y_of(tick)], fill="black")
        draw.text((left - 6, y_of(tick)), f"{tick:.3g}", fill="black", font=font, anchor="rm")
    for k, label in enumerate(x_values):
        draw.line([x_of(k), height - bottom, x_of(k), height - bottom + 4], fill="black")
        draw.text((x_of(k), height - bottom + 6), label, fill="black", font=font, anchor="mt")
    draw.text((width - right, height - 12), x_label, fill="black", font=font, anchor="rm")
    legend_x = left
    for colour, (name, ys) in zip(COLOURS, series.items()):
        points = [(x_of(k), y_of(y)) for k, y in enumerate(ys)]
        draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.line([legend_x, height - 12, legend_x + 16, height - 12], fill=colour, width=2)
        draw.text((legend_x + 20, height - 12), name, fill=colour, font=font, anchor="lm")
        legend_x += 30 + int(draw.textlength(name, font=font))
    return image


def save_panels(path, panels):
    """Panels (PIL images of one size) side by side in one PNG."""
    width, height = panels[0].size
    figure = Image.new("RGB", (width * len(panels), height), "white")
    for k, panel in enumerate(panels):
        figure.paste(panel, (k * width, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.save(path)
