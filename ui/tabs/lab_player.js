() => {
  // The 2D lab's reverse process, played in the browser: /lab_sample sends the kept paths once
  // (ddpm_core.lab2d.reverse_paths: every kept step of the cloud, each frame's t, the training points, fixed axes);
  // play, pause and the scrubber redraw a canvas from them with no request.
  if (window.ddpmPlayer) return;
  const TEXT = __TEXT__; // the lab's texts for the player, both languages (ui/tabs/lab2d.py, TEXT)
  const P = (window.ddpmPlayer = { data: null, frame: 0, playing: false, draws: 0, el: null });
  const DATA_COLOUR = "rgba(156, 163, 175, 0.45)"; // ui/plots2d.py's DATA_COLOUR and MODEL_COLOUR
  const MODEL_COLOUR = "rgba(79, 70, 229, 0.6)";
  const PLAY_MS = 5000; // a whole run plays in about 5 s, at most 25 frames a second

  const LANGS = __LANGS__; // ui/i18n.py's LANGS: the language switch's choices
  const lang = () => LANGS[document.querySelector("#lang input:checked")?.value] ?? "en";
  const text = (key, fmt = {}) =>
    (TEXT[lang()][key] ?? TEXT.en[key]).replace(/\{(\w+)\}/g, (_, k) => String(fmt[k]));

  // ddpm_core.lab2d.reverse_paths' encoding: little-endian int16 steps of lim / levels (as every browser reads
  // an Int16Array); a point beyond the axes is OFF in both coordinates and is left out
  const OFF = -32768;
  const coords = (b64, lim, levels) => {
    const s = atob(b64);
    const u8 = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) u8[i] = s.charCodeAt(i);
    const q = new Int16Array(u8.buffer);
    const out = new Float32Array(q.length);
    const step = lim / levels;
    for (let i = 0; i < q.length; i++) out[i] = q[i] === OFF ? NaN : q[i] * step;
    return out;
  };

  // Built inside the lab's #lab-player block the first time data arrives (the tab is on screen by then).
  const build = () => {
    const host = document.querySelector("#lab-player");
    if (!host) return null;
    if (P.el && P.el.root.isConnected) return P.el;
    const root = document.createElement("div");
    root.id = "lab-player-root";
    root.style.cssText = "display:flex;flex-direction:column;gap:6px;width:100%;max-width:480px";
    const canvas = document.createElement("canvas");
    canvas.id = "lab-player-canvas";
    canvas.setAttribute("role", "img"); // named by the readout, for a screen reader
    // scales with its column, square like the lab's other panels
    canvas.style.cssText = "width:100%;aspect-ratio:1;display:block;background:#fff;border-radius:4px";
    const bar = document.createElement("div");
    bar.style.cssText = "display:flex;align-items:center;gap:8px;min-width:0";
    const button = document.createElement("button");
    button.id = "lab-player-play";
    button.type = "button";
    button.className = "lg secondary";
    button.style.cssText =
      "flex:none;min-width:5.5em;padding:4px 10px;border-radius:var(--button-large-radius,6px);cursor:pointer;" +
      "border:1px solid var(--button-secondary-border-color,#d1d5db);" +
      "background:var(--button-secondary-background-fill,#f3f4f6);color:var(--button-secondary-text-color,inherit)";
    const range = document.createElement("input");
    range.id = "lab-player-step";
    range.type = "range";
    range.min = "0";
    range.step = "1";
    range.style.cssText = "flex:1;min-width:0;width:100%";
    const readout = document.createElement("div");
    readout.id = "lab-player-t";
    readout.style.cssText = "font-variant-numeric:tabular-nums;min-height:1.4em";
    bar.append(button, range);
    root.append(canvas, bar, readout);
    host.append(root);
    button.addEventListener("click", () => (P.playing ? P.pause() : P.play()));
    range.addEventListener("input", () => {
      P.pause();
      P.draw(Number(range.value));
    });
    P.el = { root, canvas, button, range, readout };
    // a new width (a window resized, a phone turned, the tab shown again after data came while it was hidden):
    // redrawn at the canvas's new size
    new ResizeObserver(() => P.data && canvas.clientWidth && P.draw(P.frame)).observe(canvas);
    return P.el;
  };

  const label = () => {
    if (!P.el) return;
    P.el.button.textContent = text(P.playing ? "player_pause" : "player_play");
    P.el.range.setAttribute("aria-label", text("player_step"));
    if (!P.data) return;
    const d = P.data.d;
    const t = d.t[P.frame];
    const fmt = { t, k: d.step[P.frame], n: d.step[d.frames - 1] };
    P.el.readout.textContent = text(t === null ? "player_x0" : "player_t", fmt);
    P.el.canvas.setAttribute("aria-label", P.el.readout.textContent);
  };

  P.clear = () => {
    P.pause();
    P.data = null;
    if (P.el) P.el.root.style.display = "none";
  };

  P.load = (d) => {
    if (!d || !d.xy) return P.clear();
    P.pause();
    const xy = coords(d.xy, d.lim, d.levels);
    const data = coords(d.data, d.lim, d.levels);
    if (xy.length !== d.frames * d.points * 2 || data.length !== d.data_points * 2) return P.clear();
    P.data = { d, xy, data };
    const el = build();
    if (!el) return;
    el.root.style.display = "flex";
    el.range.max = String(d.frames - 1);
    P.draw(0);
  };

  // One frame: the training points faintly, then the cloud at that step, in fixed axes [-lim, lim]^2.
  P.draw = (k) => {
    const el = P.el && P.el.root.isConnected ? P.el : build();
    if (!el || !P.data) return;
    const { d, xy, data } = P.data;
    P.frame = Math.max(0, Math.min(d.frames - 1, k | 0));
    const c = el.canvas;
    const side = Math.max(1, Math.round(c.clientWidth * (window.devicePixelRatio || 1)));
    if (c.width !== side || c.height !== side) c.width = c.height = side;
    const g = c.getContext("2d");
    // room for the tick labels at the left and bottom, as the lab's matplotlib panels have them
    const left = side * 0.08;
    const top = side * 0.025;
    const box = side - left - top;
    const scale = box / (2 * d.lim);
    const X = (x) => left + (x + d.lim) * scale;
    const Y = (y) => top + (d.lim - y) * scale;
    g.fillStyle = "#fff";
    g.fillRect(0, 0, side, side);
    g.strokeStyle = "rgba(0, 0, 0, 0.08)"; // the unit grid, as the other panels' faint grid
    g.lineWidth = 1;
    g.fillStyle = "#374151";
    g.font = `${Math.round(side / 40)}px sans-serif`;
    g.beginPath();
    for (let v = -Math.floor(d.lim); v <= d.lim; v++) {
      g.moveTo(X(v), Y(-d.lim));
      g.lineTo(X(v), Y(d.lim));
      g.moveTo(X(-d.lim), Y(v));
      g.lineTo(X(d.lim), Y(v));
      g.textAlign = "center";
      g.textBaseline = "top";
      g.fillText(String(v), X(v), Y(-d.lim) + side * 0.01);
      g.textAlign = "right";
      g.textBaseline = "middle";
      g.fillText(String(v), X(-d.lim) - side * 0.01, Y(v));
    }
    g.stroke();
    g.strokeStyle = "rgba(0, 0, 0, 0.45)";
    g.strokeRect(X(-d.lim), Y(d.lim), box, box);
    g.save();
    g.beginPath();
    g.rect(X(-d.lim), Y(d.lim), box, box);
    g.clip(); // points beyond the limits (x_T's tails) are cut at the frame, as in the other panels
    const dots = (arr, from, n, r, colour) => {
      g.fillStyle = colour;
      g.beginPath();
      for (let i = 0; i < n; i++) {
        const x = X(arr[from + 2 * i]);
        const y = Y(arr[from + 2 * i + 1]);
        if (Number.isNaN(x)) continue; // beyond the axes
        g.moveTo(x + r, y);
        g.arc(x, y, r, 0, 2 * Math.PI);
      }
      g.fill();
    };
    const r = Math.max(1, side / 320);
    dots(data, 0, d.data_points, r, DATA_COLOUR);
    dots(xy, P.frame * d.points * 2, d.points, 1.3 * r, MODEL_COLOUR);
    g.restore();
    el.range.value = String(P.frame);
    label();
    P.draws += 1;
  };

  let timer = null;
  P.play = () => {
    if (!P.data) return;
    const d = P.data.d;
    if (P.frame >= d.frames - 1) P.draw(0); // from the end: play again from x_T
    P.playing = true;
    label();
    const every = Math.max(40, PLAY_MS / d.frames);
    let last = performance.now();
    const tick = (now) => {
      if (!P.playing) return;
      if (now - last >= every) {
        last = now;
        P.draw(P.frame + 1);
        if (P.frame >= d.frames - 1) return P.pause();
      }
      timer = requestAnimationFrame(tick);
    };
    timer = requestAnimationFrame(tick);
  };

  P.pause = () => {
    P.playing = false;
    if (timer !== null) cancelAnimationFrame(timer);
    timer = null;
    label();
  };

  // the language switch relabels the controls and the readout
  document.addEventListener("change", (e) => e.target.closest?.("#lang") && setTimeout(label, 0), true);
}
