// heatmap-cli report: a gallery of the images of one output folder and a viewer that draws any
// stored class's map from its grid. Everything it needs is in this page or in index_files/,
// loaded with <script> tags (a page opened from file:// may load scripts, not fetch files).
(() => {
  'use strict';

  const REPORT = JSON.parse(document.getElementById('report-data').textContent);
  const $ = (id) => document.getElementById(id);
  const LUT = bytesOf(REPORT.lut);
  const LUT_SIZE = LUT.length / 3;
  const U16 = 65535;
  const GREY = 128; // the background colour bars are composited over (render.labels)
  const state = { entry: null, grid: null, labels: null, cls: null, hovered: null, order: REPORT.images };

  // ------------------------------------------------------------------ decoding and loading

  function bytesOf(base64) {
    const text = atob(base64);
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }

  function uint16Of(base64) {
    const bytes = bytesOf(base64);
    const out = new Uint16Array(bytes.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = bytes[2 * i] | (bytes[2 * i + 1] << 8);
    return out;
  }

  const received = new Map();
  const loading = new Map();

  function settle(id, value) {
    received.set(id, value);
    const pending = loading.get(id);
    if (pending) pending.resolve(value);
  }

  window.heatmapReport = {
    receive: (key, data) => settle('data:' + key, data),
    receiveLabels: (hash, table) => settle('labels:' + hash, table),
  };

  function loadScript(id, url) {
    if (received.has(id)) return Promise.resolve(received.get(id));
    if (loading.has(id)) return loading.get(id).promise;
    const pending = {};
    pending.promise = new Promise((resolve, reject) => {
      pending.resolve = resolve;
      const script = document.createElement('script');
      script.src = url;
      script.onload = () => {
        script.remove();
        if (!received.has(id)) reject(new Error(url + ' did not hold the expected data'));
      };
      script.onerror = () => {
        script.remove();
        loading.delete(id);
        reject(new Error('cannot load ' + decodeURI(url)));
      };
      document.head.appendChild(script);
    });
    loading.set(id, pending);
    return pending.promise;
  }

  function decodeGrid(data) {
    const [rows, cols] = data.grid;
    const classes = data.classes ? uint16Of(data.classes) : null;
    const peaks = uint16Of(data.peaks);
    const rowOf = new Map();
    if (classes) classes.forEach((c, row) => rowOf.set(c, row));
    const cellIndex = uint16Of(data.cells.index);
    return {
      rows, cols, xs: data.xs, ys: data.ys, window: data.window, value: data.value,
      peak: (c) => {
        const row = classes ? rowOf.get(c) : (c < peaks.length ? c : undefined);
        return row === undefined ? null : peaks[row] / U16;
      },
      mapRow: new Map(data.maps.index.map((c, i) => [c, i])),
      tops: data.maps.top,
      q: bytesOf(data.maps.q),
      cellIndex,
      cellValue: uint16Of(data.cells.value),
      depth: cellIndex.length / (rows * cols),
    };
  }

  function decodeLabels(table) {
    const names = new Map();
    table.names.forEach((name, i) => names.set(table.indices ? table.indices[i] : i, name));
    return names;
  }

  // ------------------------------------------------------------------ formatting

  function fmt(value) {
    if (value === null || value === undefined) return '–';
    if (value >= 0.01 || value === 0) return value.toFixed(3);
    return value.toPrecision(2);
  }

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) for (const [k, v] of Object.entries(props)) {
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k === 'style') node.style.cssText = v;
      else if (k.startsWith('data-') || k.startsWith('aria-')) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function className(c) {
    const known = state.labels && state.labels.get(c);
    if (known) return known;
    const entry = state.entry;
    const found = entry && [...entry.rendered, ...entry.top].find((r) => r[0] === c);
    return found ? found[1] : 'class ' + c;
  }

  // ------------------------------------------------------------------ gallery

  function scoreList(ranked) {
    return el('ol', { class: 'scores' }, ...ranked.slice(0, 3).map(([, name, score]) =>
      el('li', null,
        el('i', { style: 'width:' + Math.round(100 * Math.min(1, Math.max(0, score))) + '%' }),
        el('span', { class: 'cls', text: name, title: name }),
        el('span', { class: 'score', text: fmt(score) }))));
  }

  function card(entry) {
    const picture = entry.thumb
      ? el('img', { class: 'thumb', src: entry.thumb, loading: 'lazy', decoding: 'async', alt: entry.name })
      : el('div', { class: 'thumb' });
    const flag = entry.data ? null : el('div', { class: 'flag', text: 'no map: overlays only' });
    return el('a', { class: 'card', href: '#' + encodeURIComponent(entry.key), 'data-key': entry.key, title: entry.image },
      picture, el('div', { class: 'name', text: entry.name }), flag, scoreList(entry.top));
  }

  function renderGallery() {
    const gallery = $('gallery');
    const fragment = document.createDocumentFragment();
    for (const entry of REPORT.images) fragment.append(card(entry));
    gallery.append(fragment);
    $('empty').hidden = REPORT.images.length > 0;
    const failures = REPORT.failures;
    $('summary').textContent = REPORT.images.length + ' images' +
      (failures.length ? ', ' + failures.length + ' failed' : '') + ' · ' + REPORT.generated;
    if (failures.length) {
      $('failures').hidden = false;
      $('failures-title').textContent = failures.length === 1 ? '1 input failed' : failures.length + ' inputs failed';
      $('failures-list').append(...failures.map((f) => el('li', { 'data-image': f.image },
        el('span', { class: 'path', text: f.image }), ': ' + f.reason)));
    }
  }

  function filterGallery(text) {
    const needle = text.trim().toLowerCase();
    const cards = $('gallery').children;
    const shown = [];
    REPORT.images.forEach((entry, i) => {
      const names = [entry.name, ...entry.top.map((r) => r[1]), ...entry.rendered.map((r) => r[1])];
      const match = !needle || names.some((name) => name.toLowerCase().includes(needle));
      cards[i].hidden = !match;
      if (match) shown.push(entry);
    });
    state.order = shown;
  }

  // ------------------------------------------------------------------ viewer

  async function openImage(entry, cls) {
    const viewer = $('viewer');
    viewer.hidden = false;
    if (state.entry !== entry) {
      state.entry = entry;
      state.grid = null;
      state.labels = null;
      state.cls = null;
      viewer.dataset.state = 'loading';
      showEntry(entry);
      if (entry.data) {
        try {
          const data = await loadScript('data:' + entry.key, entry.data);
          const table = await loadScript('labels:' + data.labels, entry.labels);
          if (state.entry !== entry) return;
          state.grid = decodeGrid(data);
          state.labels = decodeLabels(table);
        } catch (error) {
          if (state.entry !== entry) return;
          addNote(error.message + ': no map can be drawn');
        }
      }
    }
    selectClass(cls ?? state.cls ?? defaultClass(entry));
    viewer.dataset.state = 'ready';
  }

  function defaultClass(entry) {
    if (entry.rendered.length) return entry.rendered[0][0];
    if (entry.top.length) return entry.top[0][0];
    return null;
  }

  // The exact window's value at a class's peak, where it differs from the map's (the json's
  // exact_peak; LABEL_TOLERANCE in heatmap_cli/pipeline/fidelity.py).
  function exactNote(peak, exact) {
    return exact === null || exact === undefined || Math.abs(exact - peak) <= 0.01 ? '' : ' (exact ' + fmt(exact) + ')';
  }

  function showEntry(entry) {
    $('v-title').textContent = entry.name;
    const fidelity = entry.fidelity && ('top class as the exact windows\' on ' + Math.round(entry.fidelity.top1_agreement * entry.fidelity.cells) +
      '/' + entry.fidelity.cells + ' cells checked, largest difference ' + fmt(entry.fidelity.max_abs_diff));
    $('v-meta').textContent = [entry.model, entry.method, entry.stride && 'stride ' + entry.stride,
      entry.size && entry.size.join('×') + ' px', fidelity].filter(Boolean).join(' · ');
    const photo = $('v-photo');
    const overlay = $('v-overlay');
    const firstOverlay = entry.rendered.find((r) => r[3]);
    // Without a photo, the map is drawn on a blank stage; without a grid either, a rendered
    // overlay (which has its map drawn in) is shown instead.
    const picture = entry.photo || (!entry.data && firstOverlay ? firstOverlay[3] : null);
    if (picture) photo.src = picture;
    else photo.removeAttribute('src');
    photo.hidden = !picture;
    photo.alt = entry.name;
    overlay.hidden = true;
    overlay.removeAttribute('src');
    const canvas = $('v-map');
    const [width, height] = entry.photo_size || fitted(entry.size || [1, 1], 1280);
    canvas.width = width;
    canvas.height = height;
    canvas.hidden = !entry.data;
    $('v-window').hidden = true;
    $('v-center').hidden = true;
    $('v-notes').textContent = '';
    $('v-notes').hidden = true;
    for (const note of entry.notes) addNote(note);
    $('v-ranking').replaceChildren(...entry.top.map(([, name, score]) =>
      el('li', null, name, el('span', { text: fmt(score) }))));
    $('v-rendered').replaceChildren(...entry.rendered.map(([c, name, peak, , exact]) =>
      el('button', { type: 'button', 'data-class': c, 'aria-pressed': 'false', text: name + exactNote(peak, exact), title: 'peak ' + fmt(peak), onclick: () => selectClass(c) })));
    $('v-class').disabled = !entry.data;
    $('v-class').value = '';
    $('v-class').placeholder = entry.data ? 'Any class by name' : 'No grid: rendered classes only';
    clearCell();
    layoutStage();
  }

  // The stage takes the photo's aspect ratio at the largest size the viewer has room for.
  function layoutStage() {
    const entry = state.entry;
    if (!entry) return;
    const [width, height] = entry.size || entry.photo_size || [4, 3];
    const area = $('stage').parentNode;
    const notes = $('v-notes');
    const roomX = area.clientWidth - 32;
    const roomY = area.clientHeight - 32 - (notes.hidden ? 0 : notes.offsetHeight + 8);
    const scale = Math.max(0.01, Math.min(roomX / width, roomY / height));
    $('stage').style.width = Math.round(width * scale) + 'px';
    $('stage').style.height = Math.round(height * scale) + 'px';
  }

  function fitted([width, height], side) {
    const scale = Math.min(1, side / Math.max(width, height));
    return [Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * scale))];
  }

  function addNote(text) {
    const notes = $('v-notes');
    notes.hidden = false;
    notes.append(el('span', { text }), el('br'));
    layoutStage();
  }

  function closeViewer() {
    $('viewer').hidden = true;
    state.entry = null;
    if (location.hash) history.replaceState(null, '', location.pathname + location.search);
  }

  function step(delta) {
    const order = state.order.length ? state.order : REPORT.images;
    const at = order.indexOf(state.entry);
    const next = order[(at + delta + order.length) % order.length];
    if (next) location.hash = encodeURIComponent(next.key);
  }

  // ------------------------------------------------------------------ classes

  function selectClass(cls) {
    const entry = state.entry;
    state.cls = cls;
    $('viewer').dataset.cls = cls === null ? '' : String(cls);
    for (const chip of $('v-rendered').children) chip.setAttribute('aria-pressed', String(Number(chip.dataset.class) === cls));
    const key = encodeURIComponent(entry.key) + (cls === null ? '' : ':' + cls);
    if (location.hash.slice(1) !== key) history.replaceState(null, '', '#' + key);
    if (state.grid) drawMap(cls);
    else showRenderedOverlay(cls);
    const hovered = state.hovered;
    if (hovered) showCell(hovered[0], hovered[1]);
  }

  function showRenderedOverlay(cls) {
    const entry = state.entry;
    const rendered = entry.rendered.find((r) => r[0] === cls);
    const overlay = $('v-overlay');
    const info = $('v-class-info');
    if (rendered && rendered[3] && entry.photo) {
      overlay.src = rendered[3];
      overlay.hidden = false;
      overlay.style.opacity = $('v-alpha').value;
      info.textContent = rendered[1] + ': the rendered overlay (opacity fades it over the photo)';
    } else if (rendered && rendered[3]) {
      $('v-photo').src = rendered[3];
      $('v-photo').hidden = false;
      info.textContent = rendered[1] + ': the rendered overlay';
    } else {
      info.textContent = cls === null ? '' : className(cls) + ': no overlay was rendered';
    }
    setColorBar(null);
  }

  function drawMap(cls) {
    const grid = state.grid;
    const canvas = $('v-map');
    const context = canvas.getContext('2d');
    const info = $('v-class-info');
    const row = cls === null ? undefined : grid.mapRow.get(cls);
    if (row === undefined) {
      context.clearRect(0, 0, canvas.width, canvas.height);
      canvas.dataset.cls = '';
      const peak = cls === null ? null : grid.peak(cls);
      info.textContent = cls === null ? '' : peak === null
        ? className(cls) + ': not in this image\'s grid file'
        : className(cls) + ': peak ' + fmt(peak) + ', below 1/255 everywhere; not stored, ' +
          'nothing would show at the overlays\' scale (0 to ' + fmt(REPORT.floor) + ')';
      setColorBar(null);
      return;
    }
    const top = grid.tops[row];
    const [low, high] = state.entry.range || [0, top];
    paint(context, canvas.width, canvas.height, grid, grid.q.subarray(row * grid.rows * grid.cols, (row + 1) * grid.rows * grid.cols), top, low, high);
    canvas.dataset.cls = String(cls);
    info.textContent = className(cls) + ' (#' + cls + '): peak ' + fmt(grid.peak(cls)) +
      ', drawn from ' + fmt(low) + ' to ' + fmt(high) +
      (state.entry.range ? ' (the scale the overlays share)' : '');
    setColorBar(low, high);
  }

  // Bilinear between window centres (values sit at the centres, held constant beyond the
  // outermost ones), then the colour map's bin. As in the PNG overlays: the opacity is
  // alpha * sqrt(heat) (alpha: the slider, through the canvas's CSS opacity), faded out
  // beyond the outermost window centres, where no window is centred.
  function paint(context, width, height, grid, q, top, low, high) {
    const [ow, oh] = state.entry.size || [width, height];
    const ax = axisPlan(grid.xs, width, ow / width);
    const ay = axisPlan(grid.ys, height, oh / height);
    const across = new Float32Array(grid.rows * width);
    for (let r = 0; r < grid.rows; r++) {
      for (let x = 0; x < width; x++) {
        const t = ax.t[x];
        across[r * width + x] = q[r * grid.cols + ax.lo[x]] * (1 - t) + q[r * grid.cols + ax.hi[x]] * t;
      }
    }
    const toScore = top / 255;
    const span = high - low;
    const image = context.createImageData(width, height);
    const pixels = image.data;
    for (let y = 0; y < height; y++) {
      const t = ay.t[y];
      const lo = ay.lo[y] * width;
      const hi = ay.hi[y] * width;
      for (let x = 0; x < width; x++) {
        const score = (across[lo + x] * (1 - t) + across[hi + x] * t) * toScore;
        const heat = Math.min(Math.max((score - low) / span, 0), 1);
        const bin = Math.min(Math.floor(heat * LUT_SIZE), LUT_SIZE - 1);
        const at = 4 * (y * width + x);
        pixels[at] = LUT[3 * bin];
        pixels[at + 1] = LUT[3 * bin + 1];
        pixels[at + 2] = LUT[3 * bin + 2];
        pixels[at + 3] = Math.round(Math.sqrt(heat) * ax.fade[x] * ay.fade[y] * 255);
      }
    }
    context.putImageData(image, 0, 0);
  }

  function axisPlan(nodes, length, scale) {
    const lo = new Int32Array(length);
    const hi = new Int32Array(length);
    const t = new Float32Array(length);
    const fade = new Float32Array(length);
    const first = nodes[0];
    const last = nodes[nodes.length - 1];
    const total = length * scale;
    let k = 0;
    for (let i = 0; i < length; i++) {
      const at = (i + 0.5) * scale;
      let kept = 1;
      if (first > 0) kept = Math.min(kept, at / first);
      if (last < total) kept = Math.min(kept, (total - at) / (total - last));
      fade[i] = Math.min(Math.max(kept, 0), 1);
      const p = Math.min(Math.max(at, first), last);
      while (k < nodes.length - 2 && nodes[k + 1] <= p) k++;
      lo[i] = k;
      hi[i] = Math.min(k + 1, nodes.length - 1);
      t[i] = hi[i] === k ? 0 : (p - nodes[k]) / (nodes[k + 1] - nodes[k]);
    }
    return { lo, hi, t, fade };
  }

  function setColorBar(low, high) {
    const bar = $('v-bar');
    bar.parentNode.hidden = low === null;
    if (low === null) return;
    $('v-tick-low').textContent = fmt(low);
    $('v-tick-mid').textContent = fmt((low + high) / 2);
    $('v-tick-high').textContent = fmt(high);
    $('v-bar-label').textContent = state.grid.value + ', ' + REPORT.cmap;
  }

  // The colours as the map draws them at the slider's opacity (alpha * sqrt(heat)), over
  // neutral grey, as the PNG overlays' colour bars.
  function drawColorBar(opacity) {
    const bar = $('v-bar');
    bar.width = LUT_SIZE;
    const context = bar.getContext('2d');
    const image = context.createImageData(LUT_SIZE, 1);
    for (let i = 0; i < LUT_SIZE; i++) {
      const a = opacity * Math.sqrt((i + 0.5) / LUT_SIZE);
      const mix = (c) => Math.round(GREY * (1 - a) + c * a);
      image.data.set([mix(LUT[3 * i]), mix(LUT[3 * i + 1]), mix(LUT[3 * i + 2]), 255], 4 * i);
    }
    context.putImageData(image, 0, 0);
  }

  // ------------------------------------------------------------------ class picker

  function classChoices(needle) {
    const grid = state.grid;
    const choices = [];
    for (const [c, name] of state.labels) {
      if (needle && !name.toLowerCase().includes(needle) && String(c) !== needle) continue;
      choices.push([c, name, grid.peak(c)]);
    }
    choices.sort((a, b) => (b[2] ?? -1) - (a[2] ?? -1) || a[0] - b[0]);
    return choices.slice(0, 60);
  }

  function showOptions() {
    const list = $('v-options');
    const input = $('v-class');
    if (!state.labels) return;
    const choices = classChoices(input.value.trim().toLowerCase());
    list.replaceChildren(...choices.map(([c, name, peak], i) => el('li', {
      role: 'option', 'data-class': c, 'aria-selected': String(i === 0),
      onmousedown: (event) => { event.preventDefault(); choose(c); },
    }, el('span', { text: name }), el('span', { class: 'peak', text: peak === null ? 'not stored' : fmt(peak) }))));
    if (!choices.length) list.append(el('li', { class: 'muted', text: 'no class matches' }));
    list.hidden = false;
    input.setAttribute('aria-expanded', 'true');
  }

  function hideOptions() {
    $('v-options').hidden = true;
    $('v-class').setAttribute('aria-expanded', 'false');
  }

  function choose(cls) {
    $('v-class').value = className(cls);
    hideOptions();
    selectClass(cls);
  }

  function moveActive(delta) {
    const items = [...$('v-options').querySelectorAll('li[role=option]')];
    if (!items.length) return;
    const at = items.findIndex((li) => li.getAttribute('aria-selected') === 'true');
    const next = Math.min(Math.max(at + delta, 0), items.length - 1);
    items.forEach((li, i) => li.setAttribute('aria-selected', String(i === next)));
    items[next].scrollIntoView({ block: 'nearest' });
  }

  // ------------------------------------------------------------------ hovering

  function nearest(nodes, value) {
    let best = 0;
    for (let i = 1; i < nodes.length; i++) if (Math.abs(nodes[i] - value) < Math.abs(nodes[best] - value)) best = i;
    return best;
  }

  function onPointer(event) {
    const grid = state.grid;
    if (!grid || !state.entry.size) return;
    const rect = $('stage').getBoundingClientRect();
    const [ow, oh] = state.entry.size;
    const x = (event.clientX - rect.left) / rect.width * ow;
    const y = (event.clientY - rect.top) / rect.height * oh;
    const r = nearest(grid.ys, y);
    const c = nearest(grid.xs, x);
    if (!state.hovered || state.hovered[0] !== r || state.hovered[1] !== c) showCell(r, c);
  }

  function showCell(r, c) {
    const grid = state.grid;
    const [ow, oh] = state.entry.size;
    const [ww, wh] = grid.window;
    const cx = grid.xs[c];
    const cy = grid.ys[r];
    state.hovered = [r, c];
    const box = $('v-window');
    box.hidden = false;
    box.style.left = (100 * (cx - ww / 2) / ow) + '%';
    box.style.top = (100 * (cy - wh / 2) / oh) + '%';
    box.style.width = (100 * ww / ow) + '%';
    box.style.height = (100 * wh / oh) + '%';
    const dot = $('v-center');
    dot.hidden = false;
    dot.style.left = (100 * cx / ow) + '%';
    dot.style.top = (100 * cy / oh) + '%';
    const cell = $('v-cell');
    cell.classList.remove('muted');
    cell.dataset.row = r;
    cell.dataset.col = c;
    cell.textContent = 'row ' + r + ', column ' + c + ': window x ' + Math.round(cx - ww / 2) + '–' +
      Math.round(cx + ww / 2) + ', y ' + Math.round(cy - wh / 2) + '–' + Math.round(cy + wh / 2) + ' px';
    const base = (r * grid.cols + c) * grid.depth;
    const rows = [];
    let selected = null;
    for (let k = 0; k < grid.depth; k++) {
      const cls = grid.cellIndex[base + k];
      const value = grid.cellValue[base + k] / U16;
      if (cls === state.cls) selected = value;
      rows.push(el('tr', { 'data-class': cls, 'data-value': value.toFixed(6), class: cls === state.cls ? 'selected' : '' },
        el('td', { text: String(k + 1) }), el('td', { text: className(cls) }), el('td', { class: 'value', text: fmt(value) })));
    }
    $('v-top').tBodies[0].replaceChildren(...rows);
    $('v-cell-class').textContent = state.cls === null ? '' : className(state.cls) + ' here: ' + selectedValue(selected, r, c);
  }

  function selectedValue(exact, r, c) {
    const grid = state.grid;
    if (exact !== null) return fmt(exact);
    const row = grid.mapRow.get(state.cls);
    if (row === undefined) return 'below 1/255';
    const q = grid.q[(row * grid.rows + r) * grid.cols + c];
    return '≈ ' + fmt(q / 255 * grid.tops[row]) + ' (8-bit map)';
  }

  function clearCell() {
    state.hovered = null;
    $('v-window').hidden = true;
    $('v-center').hidden = true;
    const cell = $('v-cell');
    cell.classList.add('muted');
    cell.textContent = state.entry && !state.entry.data ? 'No grid for this image.' : 'Point at the photo.';
    delete cell.dataset.row;
    delete cell.dataset.col;
    $('v-top').tBodies[0].replaceChildren();
    $('v-cell-class').textContent = '';
  }

  // ------------------------------------------------------------------ wiring

  // "#<image>" or "#<image>:<class index>", the image named by its key or its name.
  function route() {
    const hash = decodeURIComponent(location.hash.slice(1));
    if (!hash) {
      if (!$('viewer').hidden) closeViewer();
      return;
    }
    const find = (id) => REPORT.images.find((e) => e.key === id) || REPORT.images.find((e) => e.name === id);
    const split = hash.lastIndexOf(':');
    const whole = find(hash);
    const entry = whole || (split > 0 ? find(hash.slice(0, split)) : null);
    const cls = whole ? NaN : Number(hash.slice(split + 1));
    if (!entry) return closeViewer();
    openImage(entry, Number.isInteger(cls) ? cls : undefined);
  }

  function setAlpha(value) {
    $('v-alpha').value = value;
    $('v-alpha-value').textContent = Number(value).toFixed(2);
    $('v-map').style.opacity = value;
    $('v-overlay').style.opacity = value;
    drawColorBar(Number(value));
  }

  function wire() {
    $('filter').addEventListener('input', (event) => filterGallery(event.target.value));
    $('v-close').addEventListener('click', closeViewer);
    $('v-prev').addEventListener('click', () => step(-1));
    $('v-next').addEventListener('click', () => step(1));
    $('v-alpha').addEventListener('input', (event) => setAlpha(event.target.value));
    const stage = $('stage');
    stage.addEventListener('pointermove', onPointer);
    stage.addEventListener('pointerleave', clearCell);
    const input = $('v-class');
    input.addEventListener('focus', showOptions);
    input.addEventListener('input', showOptions);
    input.addEventListener('blur', hideOptions);
    input.addEventListener('keydown', (event) => {
      if (event.key === 'ArrowDown' || event.key === 'ArrowUp') {
        event.preventDefault();
        moveActive(event.key === 'ArrowDown' ? 1 : -1);
      } else if (event.key === 'Enter') {
        const active = $('v-options').querySelector('li[aria-selected="true"]');
        if (active) choose(Number(active.dataset.class));
      } else if (event.key === 'Escape') {
        event.stopPropagation();
        hideOptions();
      }
    });
    document.addEventListener('keydown', (event) => {
      if ($('viewer').hidden || event.target.tagName === 'INPUT') return;
      if (event.key === 'Escape') closeViewer();
      else if (event.key === 'ArrowLeft') step(-1);
      else if (event.key === 'ArrowRight') step(1);
    });
    window.addEventListener('hashchange', route);
    window.addEventListener('resize', layoutStage);
  }

  renderGallery();
  setAlpha(REPORT.alpha);
  wire();
  route();
  document.documentElement.dataset.ready = 'true';
  performance.mark('heatmap-report-ready');
})();
