// Drives a running gateway through the types openapi-typescript generated from openapi.yaml
// (src/api.d.ts): recommendations, impressions and clicks with the page's tracking token, then
// the experiment's results, asserting the exact counts it sent. Every body is also checked
// against the gateway's /openapi.json (src/conform.ts): a field the server sends as null while
// the spec, and so the generated type, says `string` fails the check.
//
//   RECGW_URL        base URL (required), e.g. http://127.0.0.1:8080
//   RECGW_PLACEMENT  placement with a running experiment (default: home)
//   RECGW_USER       a user the experiment counts (default: 42, not a QA override)
//   RECGW_API_KEY    sent as X-API-Key when set

import assert from "node:assert/strict";
import createClient from "openapi-fetch";
import type { components, paths } from "./api.js";
import { Conformance, type Spec } from "./conform.js";

type Schemas = components["schemas"];
type ArmResults = Schemas["ArmResultsBody"];
type Event = Schemas["EventBody"];

const baseUrl = process.env["RECGW_URL"];
if (!baseUrl) throw new Error("set RECGW_URL to the gateway's base URL");
const placement = process.env["RECGW_PLACEMENT"] ?? "home";
const userId = process.env["RECGW_USER"] ?? "42";
const apiKey = process.env["RECGW_API_KEY"];
const headers: Record<string, string> = apiKey ? { "X-API-Key": apiKey } : {};

const client = createClient<paths>({ baseUrl, headers });

// Every body is checked against the spec the gateway serves (the same document as openapi.yaml).
const specResponse = await fetch(new URL("/openapi.json", baseUrl));
assert.equal(specResponse.status, 200, "GET /openapi.json");
const spec = new Conformance((await specResponse.json()) as Spec);
const conforms = spec.check.bind(spec);

// --- The flow a client app runs. ---

// The running experiment on the placement, from the catalog.
const catalog = await client.GET("/experiments");
assert.equal(catalog.response.status, 200, "GET /experiments");
assert.ok(catalog.data);
conforms("/experiments", "get", 200, catalog.data);
const experiment = catalog.data.experiments.find((e) => e.placement === placement && e.active);
assert.ok(experiment, `no active experiment on placement ${placement}`);
assert.ok(!(userId in experiment.overrides), `${userId} is a QA override, which results do not count`);

async function results(): Promise<Schemas["ResultsBody"]> {
  assert.ok(experiment);
  const { data, response } = await client.GET("/experiments/{id}/results", {
    params: { path: { id: experiment.id } },
  });
  assert.equal(response.status, 200, "GET /experiments/{id}/results");
  assert.ok(data);
  conforms("/experiments/{id}/results", "get", 200, data);
  return data;
}
const before = await results();

const ready = await client.GET("/ready");
assert.equal(ready.response.status, 200, "GET /ready");
conforms("/ready", "get", 200, ready.data);

// Two pages for one user, each with its own tracking token.
async function page(offset: number): Promise<Schemas["RecommendationsBody"]> {
  const { data, error, response } = await client.GET("/recommendations/{user_id}", {
    params: { path: { user_id: userId }, query: { placement, limit: 5, offset } },
  });
  assert.equal(response.status, 200, `GET /recommendations/${userId} (${JSON.stringify(error)})`);
  assert.ok(data);
  conforms("/recommendations/{user_id}", "get", 200, data);
  assert.equal(data.user_id, userId);
  assert.equal(data.placement, placement);
  assert.equal(data.experiment, experiment?.id);
  assert.equal(data.forced, false);
  assert.equal(data.offset, offset);
  assert.equal(data.limit, 5);
  assert.equal(data.items.length, 5, "a full page");
  assert.ok(data.total >= offset + 5);
  // Optional fields: absent or null both mean "none", whichever the spec settles on.
  assert.equal(data.next_offset ?? null, data.total > offset + 5 ? offset + 5 : null, "next_offset");
  assert.notEqual(data.source, "fallback", `user ${userId} should be in the arm's model`);
  assert.equal(data.fallback_reason ?? null, null, "no fallback_reason without a fallback");
  data.items.forEach((item, i) => {
    assert.ok(i === 0 || item.rank > (data.items[i - 1]?.rank ?? 0), "ranks ascend");
  });
  assert.ok(data.tracking_token.length > 0);
  return data;
}
const first = await page(0);
const second = await page(5);
assert.equal(second.arm, first.arm, "one user, one arm");
const arm = first.arm;
assert.ok(
  experiment.arms.some((a) => a.name === arm),
  `arm ${arm} is one of ${experiment.id}'s`,
);

// The assignment endpoint explains the same arm.
const why = await client.GET("/experiments/{id}/assignment/{user_id}", {
  params: { path: { id: experiment.id, user_id: userId } },
});
assert.equal(why.response.status, 200, "GET /experiments/{id}/assignment/{user_id}");
assert.ok(why.data);
conforms("/experiments/{id}/assignment/{user_id}", "get", 200, why.data);
assert.equal(why.data.in_experiment, true);
assert.equal(why.data.arm ?? null, arm);
assert.equal(why.data.placement_experiment ?? null, experiment.id);

// The `default` placement has no experiment (not counted): `experiment` is null or absent, and
// one page of 100 is the last, so `next_offset` is too.
const plain = await client.GET("/recommendations/{user_id}", {
  params: { path: { user_id: userId }, query: { placement: "default", limit: 100 } },
});
assert.equal(plain.response.status, 200, "GET /recommendations (default placement)");
assert.ok(plain.data);
conforms("/recommendations/{user_id}", "get", 200, plain.data);
assert.equal(plain.data.experiment ?? null, null);
assert.equal(plain.data.arm, "default");
assert.equal(plain.data.next_offset ?? null, null);
assert.equal(plain.data.items.length, plain.data.total);

// Every shown item gets an impression; one item of each page gets a click, with an event id
// so that a retry is safe.
const run = `${Date.now().toString(36)}-${process.pid}`;
const impressions: Event[] = [first, second].flatMap((p) =>
  p.items.map((item) => ({ type: "impression", tracking_token: p.tracking_token, item_id: item.item_id })),
);
const clicks: Event[] = [first, second].map((p, i) => {
  const item = p.items[1];
  assert.ok(item);
  return { type: "click", tracking_token: p.tracking_token, item_id: item.item_id, event_id: `ts-check-${run}-${i}` };
});

async function post(events: Event[]): Promise<Schemas["EventsOutcome"]> {
  const { data, error, response } = await client.POST("/events", { body: { events } });
  assert.equal(response.status, 202, `POST /events (${JSON.stringify(error)})`);
  assert.ok(data);
  conforms("/events", "post", 202, data);
  return data;
}

const sent = await post([...impressions, ...clicks]);
assert.deepEqual(sent, { accepted: impressions.length + clicks.length, rejected: 0, rejections: [] });

// A client retrying the clicks (same event ids) is answered accepted and not counted again;
// a repeated impression without an id, and an item the token did not serve, are refused.
const retried = await post(clicks);
assert.deepEqual(retried, { accepted: clicks.length, rejected: 0, rejections: [] });
const [repeat] = impressions;
const [notOnFirstPage] = second.items;
assert.ok(repeat && notOnFirstPage);
const refused = await post([
  repeat,
  { type: "click", tracking_token: first.tracking_token, item_id: notOnFirstPage.item_id, event_id: `ts-check-${run}-x` },
]);
assert.equal(refused.accepted, 0);
assert.equal(refused.rejected, 2);
assert.deepEqual(
  refused.rejections.map((r) => [r.index, r.reason, r.event_id ?? null]),
  [
    [0, "duplicate_event_id", null],
    [1, "item_not_served", `ts-check-${run}-x`],
  ],
);

// An error is typed too: ErrorBody.
const bad = await client.GET("/recommendations/{user_id}", { params: { path: { user_id: "a b" } } });
assert.equal(bad.response.status, 400);
assert.equal(bad.error?.error, "invalid_user_id");
conforms("/recommendations/{user_id}", "get", 400, bad.error);

// The results: exactly what this run sent, on the arm that served it, and nothing elsewhere.
const after = await results();
assert.equal(after.experiment, experiment.id);
assert.deepEqual(
  after.arms.map((a) => a.name),
  experiment.arms.map((a) => a.name),
  "arms in configured order",
);
const byName = (body: Schemas["ResultsBody"], name: string): ArmResults => {
  const found = body.arms.find((a) => a.name === name);
  assert.ok(found, `results have arm ${name}`);
  return found;
};
for (const { name } of experiment.arms) {
  const was = byName(before, name);
  const now = byName(after, name);
  const ours = name === arm;
  const delta = {
    exposures: now.exposures - was.exposures,
    impressions: now.impressions - was.impressions,
    clicks: now.clicks - was.clicks,
  };
  assert.deepEqual(
    delta,
    ours ? { exposures: 2, impressions: impressions.length, clicks: clicks.length } : { exposures: 0, impressions: 0, clicks: 0 },
    `counts of arm ${name}`,
  );
  if (ours) {
    // Distinct users are HyperLogLog estimates, exact at this size: on a fresh arm, one user
    // who clicked; otherwise never fewer than before.
    if (was.exposures === 0) assert.equal(now.users, 1, `users of arm ${name}`);
    else assert.ok(now.users >= Math.max(was.users, 1), `users of arm ${name}`);
    if (was.clicks === 0) assert.equal(now.clicking_users, 1, `clicking users of arm ${name}`);
    else assert.ok(now.clicking_users >= Math.max(was.clicking_users, 1), `clicking users of arm ${name}`);
  }
  // A statistic is a number, or null/absent with its reason in `undefined`.
  const ctr = now.ctr ?? null;
  if (now.impressions > 0) assert.equal(ctr, now.clicks / now.impressions, `ctr of arm ${name}`);
  else assert.ok(ctr === null && now.undefined["ctr"] !== undefined, `undefined ctr of arm ${name} has a reason`);
}

assert.deepEqual([...spec.problems], [], "the gateway sent bodies that openapi.yaml (and so api.d.ts) does not describe");
console.log(
  `ok: ${experiment.id} arm ${arm} (counts: ${after.counts}): 2 exposures, ` +
    `${impressions.length} impressions, ${clicks.length} clicks counted once each; ` +
    `a retry accepted without a second count; 2 bad events refused`,
);
