// Sessions pages: the daily energy per site (grouped bars) and a session's power curve, drawn with
// Plotly from the page config the server embedded (no extra request).
"use strict";

(function () {
  const configNode = document.getElementById("page-config");
  if (!configNode || typeof Plotly === "undefined") return;
  const config = JSON.parse(configNode.textContent);
  const layoutBase = {
    margin: { l: 50, r: 15, t: 10, b: 40 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    legend: { orientation: "h", y: -0.2 },
  };
  const options = { displaylogo: false, responsive: true };

  const daily = document.getElementById("daily-energy-chart");
  if (daily && config.daily && config.daily.length) {
    const traces = config.daily.map((site) => ({
      type: "bar",
      name: site.name,
      x: site.days,
      y: site.kwh,
      hovertemplate: "%{x}<br>%{y:.2f} kWh<extra>" + site.name + "</extra>",
    }));
    Plotly.newPlot(
      daily,
      traces,
      Object.assign({}, layoutBase, {
        barmode: "group",
        xaxis: { type: "date", tickformat: "%Y-%m-%d", dtick: 86400000 },
        yaxis: { title: { text: "kWh" }, rangemode: "tozero" },
        showlegend: true,
      }),
      options,
    );
  }

  const curveNode = document.getElementById("session-power-chart");
  const curve = config.curve;
  if (curveNode && curve) {
    const kw = (values) => (values || []).map((v) => (v === null ? null : v / 1000));
    const traces = [];
    if (curve.min_power_w && curve.max_power_w) {
      // A downsampled curve shows each bucket's range as a band around its average.
      traces.push({ x: curve.t, y: kw(curve.max_power_w), mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false });
      traces.push({
        x: curve.t, y: kw(curve.min_power_w), mode: "lines", line: { width: 0 }, fill: "tonexty",
        fillcolor: "rgba(22, 163, 74, 0.15)", hoverinfo: "skip", showlegend: false,
      });
    }
    traces.push({
      x: curve.t, y: kw(curve.power_w), mode: "lines", name: "Power",
      line: { color: "#16a34a", width: 2, shape: curve.bucket_s ? "linear" : "hv" }, hovertemplate: "%{y:.2f} kW<extra></extra>",
    });
    Plotly.newPlot(
      curveNode,
      traces,
      Object.assign({}, layoutBase, {
        showlegend: false,
        xaxis: { type: "date" },
        yaxis: { title: { text: "kW" }, rangemode: "tozero" },
        shapes: [curve.start, curve.end].map((at) => ({
          type: "line", xref: "x", yref: "paper", x0: at, x1: at, y0: 0, y1: 1,
          line: { color: "#64748b", width: 1, dash: "dot" },
        })),
      }),
      options,
    );
  }
})();
