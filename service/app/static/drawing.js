// A drawing (pen strokes) to the 28x28 input the MNIST model sees, the way MNIST digits were made.
//
// The algorithm is described once, in training/drawing.py (its module docstring); this is its
// JavaScript twin, step for step, and tests/integration/test_browser.py requires both to give the same
// array to 1e-6 on the same strokes. Change one, change the other.

export const FIELD = 28; // the output side, in pixels
export const BOX = 20; // the side of the square the ink is scaled into

/**
 * The 28x28 MNIST input for `strokes` drawn with a pen `penWidth` wide.
 * @param {number[][][]} strokes  strokes, each a list of [x, y] points (canvas units, y down)
 * @param {number} penWidth  the pen's diameter, in the same units (> 0)
 * @returns {Float64Array} 784 values in [0, 1], row-major, 1 = ink
 */
export function strokesToMnist(strokes, penWidth) {
  if (!(penWidth > 0)) throw new RangeError(`penWidth must be positive, got ${penWidth}`);
  const polylines = strokes.filter((s) => s.length > 0);
  if (polylines.length === 0) return new Float64Array(FIELD * FIELD);
  const radius = penWidth / 2;
  let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
  for (const line of polylines) {
    for (const [x, y] of line) {
      minX = Math.min(minX, x); minY = Math.min(minY, y);
      maxX = Math.max(maxX, x); maxY = Math.max(maxY, y);
    }
  }
  const lowX = minX - radius, lowY = minY - radius;
  const scale = BOX / Math.max(maxX + radius - lowX, maxY + radius - lowY);
  const placed = polylines.map((line) => line.map(([x, y]) => [(x - lowX) * scale, (y - lowY) * scale]));

  const box = render(placed, radius * scale, BOX);
  let total = 0, massX = 0, massY = 0;
  for (let i = 0; i < BOX; i++) {
    for (let j = 0; j < BOX; j++) {
      const v = box[i * BOX + j];
      total += v; massX += v * (j + 0.5); massY += v * (i + 0.5);
    }
  }
  if (total === 0) return new Float64Array(FIELD * FIELD);
  const shiftX = FIELD / 2 - massX / total, shiftY = FIELD / 2 - massY / total;
  const centred = placed.map((line) => line.map(([x, y]) => [x + shiftX, y + shiftY]));
  return render(centred, radius * scale, FIELD);
}

/** Anti-aliased coverage (side*side, row-major) of a pen of `radius` along `polylines`. */
export function render(polylines, radius, side) {
  const out = new Float64Array(side * side);
  for (let i = 0; i < side; i++) {
    const py = i + 0.5;
    for (let j = 0; j < side; j++) {
      const px = j + 0.5;
      let nearest = Infinity;
      for (const line of polylines) {
        if (line.length === 1) {
          nearest = Math.min(nearest, segmentDistance(px, py, line[0], line[0]));
          continue;
        }
        for (let k = 0; k + 1 < line.length; k++) {
          nearest = Math.min(nearest, segmentDistance(px, py, line[k], line[k + 1]));
        }
      }
      out[i * side + j] = Math.min(1, Math.max(0, radius + 0.5 - nearest));
    }
  }
  return out;
}

/** Distance from (px, py) to the segment a-b (a point if a equals b). */
export function segmentDistance(px, py, [ax, ay], [bx, by]) {
  const dx = bx - ax, dy = by - ay;
  const length2 = dx * dx + dy * dy;
  if (length2 === 0) return Math.hypot(px - ax, py - ay);
  const t = Math.min(1, Math.max(0, ((px - ax) * dx + (py - ay) * dy) / length2));
  return Math.hypot(px - (ax + t * dx), py - (ay + t * dy));
}
