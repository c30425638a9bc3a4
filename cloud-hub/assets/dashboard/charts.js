// Inline SVG charts drawn from numbers, no library: bars(title, [{label, value}]) and
// line(title, [{label, value}]) return a <figure> to append. The SVG is written as markup and
// parsed by the HTML parser (which puts <svg> in the SVG namespace), every text escaped.
"use strict";
(function () {
  const W = 420, H = 180, PAD = 28;

  function esc(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
      '"': "&quot;", "'": "&#39;" }[c]));
  }

  function figure(title, points, body) {
    const max = Math.max(1, ...points.map((p) => p.value));
    const box = document.createElement("figure");
    box.className = "chart";
    box.innerHTML = `<figcaption>${esc(title)}</figcaption>` +
      `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">` +
      `<line x1="${PAD}" y1="${H - PAD}" x2="${W - 4}" y2="${H - PAD}" stroke="#999"></line>` +
      `<text x="2" y="${PAD}">${max}</text><text x="2" y="${H - PAD}">0</text>` +
      body(max) + "</svg>";
    return box;
  }

  function every(n) { return Math.max(1, Math.ceil(n / 12)); }
  function label(p, i, n, x) {
    return i % every(n) === 0 ? `<text x="${x.toFixed(1)}" y="${H - PAD + 12}">${esc(p.label)}</text>` : "";
  }

  window.Charts = {
    bars(title, points) {
      return figure(title, points, (max) => {
        const n = Math.max(1, points.length);
        const step = (W - PAD - 4) / n;
        return points.map((p, i) => {
          const h = ((H - 2 * PAD) * p.value) / max;
          const x = PAD + i * step + step * 0.1;
          return `<rect x="${x.toFixed(1)}" y="${(H - PAD - h).toFixed(1)}" width="${(step * 0.8).toFixed(1)}" ` +
            `height="${h.toFixed(1)}" fill="#0b57d0"><title>${esc(p.label)}: ${esc(p.value)}</title></rect>` +
            label(p, i, n, x);
        }).join("");
      });
    },
    line(title, points) {
      return figure(title, points, (max) => {
        const n = Math.max(2, points.length);
        const step = (W - PAD - 4) / (n - 1);
        const xy = points.map((p, i) => [PAD + i * step, H - PAD - ((H - 2 * PAD) * p.value) / max]);
        return `<polyline points="${xy.map((q) => q.map((v) => v.toFixed(1)).join(",")).join(" ")}" ` +
          `fill="none" stroke="#0b57d0" stroke-width="2"></polyline>` +
          points.map((p, i) => `<circle cx="${xy[i][0].toFixed(1)}" cy="${xy[i][1].toFixed(1)}" r="2.5" ` +
            `fill="#0b57d0"><title>${esc(p.label)}: ${esc(p.value)}</title></circle>` +
            label(p, i, points.length, xy[i][0])).join("");
      });
    },
  };
})();
