() => {
  // The Forward tab's t slider, drawn in the browser: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (eq. 4) from the
  // x0, eps and readouts that /forward_scrub computed once (ddpm_core.explore.forward_scrub). Dragging t redraws a
  // canvas over the x_t image and rewrites the readout row, with no request; releasing t still asks /forward for
  // the full-size result, and the canvas steps aside once that image is shown.
  if (window.ddpmScrub) return;
  const S = (window.ddpmScrub = { data: null, t: null, canvas: null, draws: 0, last: null });
  const f = Math.fround; // float32 arithmetic, as torch computes q_sample, so the pixels match the core's

  const bytes = (b64) => {
    const s = atob(b64);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  };

  S.clear = () => {
    S.data = null;
    S.t = null;
    hide();
  };

  S.load = (d) => {
    if (!d || !d.x0) return S.clear();
    const start = performance.now();
    const u8 = bytes(d.x0);
    const X = new Float32Array(u8.length);
    for (let i = 0; i < u8.length; i++) X[i] = f(f(u8[i]) / 127.5) - 1; // to_model_range: x / 127.5 - 1
    const E = new Float32Array(bytes(d.eps).buffer); // little-endian float32, as every browser reads it
    const img = new ImageData(d.width, d.height);
    for (let p = 3; p < img.data.length; p += 4) img.data[p] = 255;
    S.data = { d, X, E, img, n: d.width * d.height, C: d.channels };
    const c = canvas();
    c.width = d.width;
    c.height = d.height;
    S.ctx = c.getContext("2d");
    S.loadMs = performance.now() - start; // decoding the data once (bench/forward_scrub.py reports it)
    if (shown() && S.t < d.T) S.draw(S.t);
    else hide();
  };

  const canvas = () => {
    if (!S.canvas) {
      const c = (S.canvas = document.createElement("canvas"));
      c.id = "xt-scrub";
      c.setAttribute("aria-hidden", "true");
      c.style.cssText = "position:absolute;display:none;pointer-events:none;object-fit:contain;z-index:1";
    }
    return S.canvas;
  };

  // Over the x_t image, in the box the image takes (gradio shows it at most at its own size: object-fit scale-down).
  const place = () => {
    const c = S.canvas;
    const box = document.querySelector("#xt-image .image-container");
    if (!c || !box) return false;
    if (c.parentElement !== box) box.appendChild(c);
    const img = box.querySelector("img");
    const b = box.getBoundingClientRect();
    const r = img ? img.getBoundingClientRect() : b;
    let w = r.width;
    let h = r.height;
    if (img && img.naturalWidth) {
      const s = Math.min(1, r.width / img.naturalWidth, r.height / img.naturalHeight);
      w = img.naturalWidth * s;
      h = img.naturalHeight * s;
    }
    c.style.left = `${r.left - b.left + (r.width - w) / 2}px`;
    c.style.top = `${r.top - b.top + (r.height - h) / 2}px`;
    c.style.width = `${w}px`;
    c.style.height = `${h}px`;
    return true;
  };

  // The server's image for this t is shown (its file is named x_t-t{t}.png): it is the full-size result.
  const served = () => {
    const img = document.querySelector("#xt-image img");
    return !!img && img.complete && decodeURIComponent(img.src).endsWith(`/x_t-t${S.t}.png`);
  };

  const shown = () => !!S.canvas && S.canvas.style.display === "block";
  const hide = () => S.canvas && (S.canvas.style.display = "none");
  const show = () => {
    if ((!shown() || !S.canvas.isConnected) && place()) S.canvas.style.display = "block";
  };

  S.draw = (t, since) => {
    const { d, X, E, img, n, C } = S.data;
    S.t = t;
    const a = f(d.table.sqrt_alpha_bar[t]);
    const b = f(d.table.sqrt_one_minus_alpha_bar[t]);
    const out = img.data; // Uint8ClampedArray: clamps and rounds half to even, as to_uint8 does
    for (let p = 0; p < n; p++) {
      for (let k = 0; k < 3; k++) {
        const i = p * C + (C === 1 ? 0 : k);
        out[4 * p + k] = f(f(f(f(a * X[i]) + f(b * E[i])) + 1) * 127.5);
      }
    }
    S.ctx.putImageData(img, 0, 0);
    const cells = document.querySelectorAll("#readout td");
    const row = d.readout[t];
    if (cells.length === row.length) cells.forEach((td, k) => (td.textContent = row[k]));
    // the server's image of this very t, when shown, is the same x_t at full size
    if (served()) hide();
    else show();
    S.draws += 1;
    // read by the browser test and bench/forward_scrub.py: event time, drawn, and the next frame
    const rec = (S.last = { t, since: since ?? null, drawn: performance.now(), frame: null });
    requestAnimationFrame(() => (rec.frame = performance.now()));
  };

  // Capture phase: before gradio's own handlers, so the redraw does not wait on them.
  document.addEventListener(
    "input",
    (e) => {
      const el = e.target;
      if (!(el instanceof HTMLInputElement) || !el.closest("#t-slider") || !S.data) return;
      const t = Number(el.value);
      if (el.value !== "" && Number.isInteger(t) && t >= 0 && t < S.data.d.T) S.draw(t, e.timeStamp);
    },
    true,
  );
  // load events do not bubble, but they pass the document in the capture phase
  // (it only steps aside: an image of another t, e.g. after T moved t, must not bring back an old drawing)
  document.addEventListener("load", (e) => e.target.closest?.("#xt-image") && shown() && served() && hide(), true);
  window.addEventListener("resize", () => shown() && place());
}
