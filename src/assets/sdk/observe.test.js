// Unit tests of the browser snippet's batching, retry and parsing logic, with a fake clock,
// fake timers, fake storage and a scripted fetch. Run: node --test src/assets/sdk/
// (scripts/test.sh runs them when Node is installed).
"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const { create, parseStack } = require("./observe.js");

// A browser stand-in: `answers` are the statuses (or "throw"/"reject") fetch gives, in order,
// then 202.
function fakeBrowser(answers = [], extra = {}) {
  let clock = 1_750_000_000_000;
  const timers = [];
  const sent = [];
  const store = new Map();
  const env = {
    key: "obs_test",
    api: "https://observe.example",
    origin: "https://shop.example",
    storage: {
      getItem: (k) => (store.has(k) ? store.get(k) : null),
      setItem: (k, v) => store.set(k, String(v)),
    },
    now: () => clock,
    setTimeout: (fn, ms) => {
      timers.push({ at: clock + Math.max(0, ms), fn });
      return timers.length;
    },
    location: () => "https://shop.example/p/1",
    referrer: () => "https://google.com/",
    fetch: (url, opts) => {
      const answer = answers.length ? answers.shift() : 202;
      if (answer === "throw") throw new Error("blocked by an extension");
      sent.push({ url, opts, items: JSON.parse(opts.body) });
      if (answer === "reject") return Promise.reject(new TypeError("network"));
      const retryAfter = typeof answer === "object" ? answer.retryAfter : null;
      const status = typeof answer === "object" ? answer.status : answer;
      return Promise.resolve({
        status,
        headers: { get: (h) => (h === "Retry-After" ? retryAfter : null) },
      });
    },
    ...extra,
  };
  return {
    env,
    sent,
    store,
    // Moves the clock, running the timers that fall due (and the promises they start).
    async advance(ms) {
      const until = clock + ms;
      for (;;) {
        await new Promise((r) => setImmediate(r));
        timers.sort((a, b) => a.at - b.at);
        const next = timers[0];
        if (!next || next.at > until) break;
        timers.shift();
        clock = next.at;
        next.fn();
      }
      clock = until;
      await new Promise((r) => setImmediate(r));
    },
  };
}

test("events are batched until the flush interval, then sent as one array", async () => {
  const b = fakeBrowser();
  const o = create(b.env);
  o.track("signup", { plan: "pro" });
  o.track("search");
  o.pageview();
  assert.equal(b.sent.length, 0, "nothing sent at once");
  await b.advance(2000);
  assert.equal(b.sent.length, 1);
  const [req] = b.sent;
  assert.equal(req.url, "https://observe.example/ingest/events");
  assert.equal(req.opts.headers["X-API-Key"], "obs_test");
  assert.equal(req.opts.headers["Content-Type"], "application/json");
  assert.deepEqual(req.items.map((i) => i.event), ["signup", "search", "$pageview"]);
  assert.deepEqual(req.items[0].properties, { plan: "pro" });
  for (const item of req.items) {
    assert.equal(item.visitor_id, o.visitorId());
    assert.match(item.timestamp, /^\d{4}-\d\d-\d\dT/);
  }
  assert.equal(req.items[2].referrer, "https://google.com/");
});

test("a full batch is sent at once, the rest later", async () => {
  const b = fakeBrowser();
  const o = create(b.env);
  for (let i = 0; i < 60; i++) o.track("e" + i);
  assert.equal(b.sent.length, 1, "50 items go without waiting");
  assert.equal(b.sent[0].items.length, 50);
  await b.advance(2000);
  assert.equal(b.sent.length, 2);
  assert.equal(b.sent[1].items.length, 10);
});

test("a 429 is retried after Retry-After with the same items, not before", async () => {
  const b = fakeBrowser([{ status: 429, retryAfter: "7" }]);
  const o = create(b.env);
  o.track("a");
  o.track("b");
  await b.advance(2000);
  assert.equal(b.sent.length, 1);
  o.track("c");
  await b.advance(5000);
  assert.equal(b.sent.length, 1, "waits out Retry-After");
  await b.advance(2000);
  assert.equal(b.sent.length, 2);
  assert.deepEqual(b.sent[1].items.map((i) => i.event), ["a", "b", "c"]);
});

test("a 503 or a network failure backs off and retries; after five tries the batch is dropped", async () => {
  const b = fakeBrowser([503, "reject", "reject", "reject", "reject", "reject"]);
  const o = create(b.env);
  o.track("x");
  await b.advance(2000);
  for (let i = 0; i < 8; i++) await b.advance(30000);
  const attempts = b.sent.filter((s) => s.items.some((i) => i.event === "x")).length;
  assert.equal(attempts, 6, "the first send and five retries");
  o.track("y");
  await b.advance(2000);
  assert.deepEqual(b.sent.at(-1).items.map((i) => i.event), ["y"], "x was dropped, y goes");
});

test("other refusals are not retried", async () => {
  const b = fakeBrowser([422]);
  const o = create(b.env);
  o.track("bad");
  await b.advance(2000);
  await b.advance(60000);
  assert.equal(b.sent.length, 1);
});

test("nothing ever throws into the page", async () => {
  const b = fakeBrowser(["throw"]);
  const o = create(b.env);
  assert.doesNotThrow(() => {
    o.track("a");
    o.track(null);
    o.identify(undefined);
    o.captureError(undefined);
    o.flush(true);
  });
  const broken = fakeBrowser([], {
    storage: {
      getItem() { throw new Error("SecurityError"); },
      setItem() { throw new Error("QuotaExceeded"); },
    },
  });
  assert.doesNotThrow(() => create(broken.env).track("still fine"));
});

test("the visitor id is kept in storage; identify links it and tags later events", async () => {
  const b = fakeBrowser();
  const first = create(b.env);
  const again = create(b.env);
  assert.match(first.visitorId(), /^[0-9a-f]{32}$/);
  assert.equal(again.visitorId(), first.visitorId(), "same browser, same visitor");
  again.identify("user-7", { plan: "team" });
  again.track("after");
  await b.advance(2000);
  const identify = b.sent.find((s) => s.url.endsWith("/ingest/identify"));
  assert.deepEqual(identify.items[0].traits, { plan: "team" });
  assert.equal(identify.items[0].user_id, "user-7");
  assert.equal(identify.items[0].visitor_id, first.visitorId());
  const events = b.sent.find((s) => s.url.endsWith("/ingest/events"));
  assert.equal(events.items[0].user_id, "user-7");
  assert.equal(b.store.get("observe_uid"), "user-7");
});

test("leaving the page sends what is queued with keepalive, even while backing off", async () => {
  const b = fakeBrowser([{ status: 503, retryAfter: "60" }]);
  const o = create(b.env);
  o.track("a");
  await b.advance(2000);
  o.track("b");
  o.flush(true);
  const last = b.sent.at(-1);
  assert.equal(last.opts.keepalive, true);
  assert.deepEqual(last.items.map((i) => i.event), ["a", "b"]);
});

test("a disabled client (Do-Not-Track) sends nothing", async () => {
  const b = fakeBrowser([], { disabled: true });
  const o = create(b.env);
  o.pageview();
  o.track("a");
  o.captureError(new Error("x"));
  await b.advance(10000);
  assert.equal(b.sent.length, 0);
});

test("the same URL twice is one page view", async () => {
  const b = fakeBrowser();
  const o = create(b.env);
  o.pageview();
  o.pageview();
  await b.advance(2000);
  assert.equal(b.sent[0].items.length, 1);
});

test("errors carry their type, message and parsed frames", async () => {
  const b = fakeBrowser();
  const o = create(b.env);
  const err = new TypeError("x is undefined");
  err.stack = "TypeError: x is undefined\n    at render (https://shop.example/app.js:10:5)\n    at https://cdn.example/lib.js:1:99";
  o.captureError(err);
  await b.advance(2000);
  const item = b.sent[0].items[0];
  assert.equal(b.sent[0].url, "https://observe.example/ingest/errors");
  assert.equal(item.type, "TypeError");
  assert.equal(item.message, "x is undefined");
  assert.deepEqual(item.stack_trace[0], {
    function: "render", filename: "https://shop.example/app.js", lineno: 10, colno: 5, in_app: true,
  });
  assert.equal(item.stack_trace[1].in_app, false);
});

test("stacks of Firefox and Safari parse too", () => {
  const frames = parseStack("handler@https://shop.example/a.js:3:7\n@https://shop.example/b.js:4:1\nnot a frame", "https://shop.example");
  assert.deepEqual(frames.map((f) => [f.function, f.lineno, f.colno]), [["handler", 3, 7], ["?", 4, 1]]);
});
