/*! observe browser snippet: page views (SPA navigation too), custom events, identify and
 * uncaught errors, batched and sent to observe's ingest API. Served at /sdk/observe.js:
 *   <script src="https://observe.example/sdk/observe.js" data-key="obs_…" defer></script>
 * Options (attributes of the tag): data-key (required), data-api (ingest base URL; default the
 * script's origin), data-auto="false" (no automatic page views), data-respect-dnt (send nothing
 * when the browser asks not to be tracked), data-errors="false" (no error capture).
 * It never throws into the page, sets no cookie (the visitor id is a random id in
 * localStorage), and retries 429/503 and network failures after Retry-After or a backoff. */
(function (root) {
  "use strict";
  var MAX_BATCH = 50, FLUSH_MS = 2000, MAX_QUEUE = 500, MAX_TRIES = 5, KEEPALIVE_BYTES = 60000;

  function safe(fn) {
    return function () {
      try { return fn.apply(this, arguments); } catch (e) { /* never into the page */ }
    };
  }

  function randomId() {
    var c = root.crypto, b = [], i;
    if (c && c.getRandomValues) {
      var a = new Uint8Array(16);
      c.getRandomValues(a);
      for (i = 0; i < 16; i++) b.push((a[i] + 256).toString(16).slice(1));
      return b.join("");
    }
    for (i = 0; i < 32; i++) b.push(((Math.random() * 16) | 0).toString(16));
    return b.join("");
  }

  // Chrome/Edge: "    at fn (https://x/app.js:10:5)" or "    at https://x/app.js:10:5";
  // Firefox/Safari: "fn@https://x/app.js:10:5".
  function parseStack(stack, origin) {
    var frames = [], lines = String(stack || "").split("\n"), i, m, fn, file;
    for (i = 0; i < lines.length && frames.length < 50; i++) {
      m = /^\s*at (?:(.+?) \()?(.+?):(\d+):(\d+)\)?\s*$/.exec(lines[i]) ||
        /^\s*(.*?)@(.+?):(\d+):(\d+)\s*$/.exec(lines[i]);
      if (!m) continue;
      fn = m[1] || "?";
      file = m[2];
      frames.push({
        "function": fn, filename: file, lineno: +m[3], colno: +m[4],
        in_app: !!origin && file.indexOf(origin) === 0
      });
    }
    return frames;
  }

  // The client: `env` is what it needs of the browser, so tests can hand it fakes.
  function create(env) {
    var queues = { events: [], identify: [], errors: [] };
    var timer = null, blockedUntil = 0, tries = 0, sending = false;
    var storage = env.storage, vid, uid;
    try { vid = storage && storage.getItem("observe_vid"); } catch (e) { vid = null; }
    if (!vid) {
      vid = randomId();
      try { storage && storage.setItem("observe_vid", vid); } catch (e) { /* private mode */ }
    }
    try { uid = storage && storage.getItem("observe_uid"); } catch (e) { uid = null; }

    function now() { return env.now(); }

    function schedule(ms) {
      if (timer !== null) return;
      timer = env.setTimeout(function () { timer = null; flush(false); }, ms);
    }

    function push(kind, item) {
      if (env.disabled) return;
      var q = queues[kind];
      if (q.length >= MAX_QUEUE) q.shift();
      item.timestamp = new Date(now()).toISOString();
      q.push(item);
      if (q.length >= MAX_BATCH) flush(false); else schedule(FLUSH_MS);
    }

    // Sends each kind's queue (a batch each); on page hide with keepalive, as much as fits.
    function flush(leaving) {
      if (sending && !leaving) return;
      if (now() < blockedUntil && !leaving) { schedule(blockedUntil - now()); return; }
      ["identify", "events", "errors"].forEach(function (kind) {
        var q = queues[kind];
        if (!q.length) return;
        var batch = q.splice(0, MAX_BATCH), body = JSON.stringify(batch);
        while (leaving && body.length > KEEPALIVE_BYTES && batch.length > 1) {
          q.unshift(batch.pop());
          body = JSON.stringify(batch);
        }
        send(kind, batch, body, leaving);
      });
    }

    function retryLater(kind, batch, retryAfterSecs) {
      tries++;
      if (tries > MAX_TRIES) { tries = 0; return; }
      queues[kind] = batch.concat(queues[kind]).slice(0, MAX_QUEUE);
      var wait = retryAfterSecs > 0 ? retryAfterSecs * 1000 : Math.min(30000, 1000 * Math.pow(2, tries - 1));
      blockedUntil = now() + wait;
      schedule(wait);
    }

    function send(kind, batch, body, leaving) {
      sending = true;
      var done = function () { sending = false; };
      var p;
      try {
        p = env.fetch(env.api + "/ingest/" + kind, {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-API-Key": env.key },
          body: body,
          keepalive: !!leaving,
          credentials: "omit"
        });
      } catch (e) { done(); retryLater(kind, batch, 0); return; }
      p.then(function (res) {
        done();
        if (res.status === 429 || res.status === 503) {
          retryLater(kind, batch, parseInt(res.headers.get("Retry-After"), 10) || 0);
        } else {
          tries = 0;
          if (queues[kind].length) schedule(0);
        }
      }, function () { done(); retryLater(kind, batch, 0); });
    }

    var lastUrl = null;
    function pageview() {
      var url = env.location();
      if (url === lastUrl) return;
      push("events", {
        event: "$pageview", visitor_id: vid, user_id: uid || undefined,
        url: url, referrer: (lastUrl || env.referrer()) || undefined
      });
      lastUrl = url;
    }

    function captureError(err, fallbackMessage) {
      var e = err && typeof err === "object" ? err : null;
      push("errors", {
        type: (e && e.name) || "Error",
        message: String((e && e.message) || fallbackMessage || err || "unknown error").slice(0, 2000),
        stack_trace: e && e.stack ? parseStack(e.stack, env.origin) : undefined,
        level: "error", url: env.location(), visitor_id: vid, user_id: uid || undefined
      });
    }

    return {
      pageview: safe(pageview),
      track: safe(function (name, props) {
        if (typeof name !== "string" || !name) return;
        push("events", {
          event: name, visitor_id: vid, user_id: uid || undefined, url: env.location(),
          properties: props && typeof props === "object" ? props : undefined
        });
      }),
      identify: safe(function (userId, traits) {
        if (userId === undefined || userId === null || userId === "") return;
        uid = String(userId);
        try { storage && storage.setItem("observe_uid", uid); } catch (e) { /* ignore */ }
        push("identify", {
          visitor_id: vid, user_id: uid,
          traits: traits && typeof traits === "object" ? traits : undefined
        });
      }),
      captureError: safe(captureError),
      flush: safe(flush),
      visitorId: function () { return vid; }
    };
  }

  function start() {
    var d = root.document, script = d && d.currentScript;
    if (!script || !root.fetch) return;
    var key = script.getAttribute("data-key");
    if (!key) return;
    var api = (script.getAttribute("data-api") || new URL(script.src, root.location.href).origin).replace(/\/+$/, "");
    var nav = root.navigator || {};
    var dnt = script.hasAttribute("data-respect-dnt") &&
      (nav.doNotTrack === "1" || root.doNotTrack === "1" || nav.globalPrivacyControl === true);
    var storage = null;
    try { storage = root.localStorage; } catch (e) { storage = null; }
    var client = create({
      key: key, api: api, storage: storage, disabled: dnt, origin: root.location.origin,
      fetch: function (u, o) { return root.fetch(u, o); },
      setTimeout: function (f, ms) { return root.setTimeout(f, ms); },
      now: function () { return Date.now(); },
      location: function () { return root.location.href; },
      referrer: function () { return d.referrer; }
    });
    root.observe = client;
    if (script.getAttribute("data-auto") !== "false") {
      client.pageview();
      var h = root.history;
      ["pushState", "replaceState"].forEach(function (name) {
        var orig = h && h[name];
        if (typeof orig !== "function") return;
        h[name] = function () {
          var r = orig.apply(this, arguments);
          client.pageview();
          return r;
        };
      });
      root.addEventListener("popstate", client.pageview);
    }
    if (script.getAttribute("data-errors") !== "false") {
      root.addEventListener("error", safe(function (ev) {
        if (ev && (ev.error || ev.message)) client.captureError(ev.error, ev.message);
      }));
      root.addEventListener("unhandledrejection", safe(function (ev) {
        client.captureError(ev && ev.reason, "unhandled promise rejection");
      }));
    }
    var leave = function () { client.flush(true); };
    root.addEventListener("pagehide", leave);
    d.addEventListener("visibilitychange", function () {
      if (d.visibilityState === "hidden") leave();
    });
  }

  if (typeof module === "object" && module.exports) {
    module.exports = { create: create, parseStack: parseStack };
  } else {
    safe(start)();
  }
})(typeof window !== "undefined" ? window : globalThis);
