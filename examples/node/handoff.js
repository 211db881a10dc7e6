// Observe on one selfmodel node, read the subject on another with the handoff token.
//
//   SELFMODEL_WRITE=127.0.0.1:7070 SELFMODEL_READ=127.0.0.1:7071 SELFMODEL_TOKEN=... node handoff.js
//
// Settings (environment):
//   SELFMODEL_WRITE, SELFMODEL_READ  the two nodes (host:port, plaintext)
//   SELFMODEL_TOKEN                  a token (`selfmodel token create`): sent as
//                                    `authorization: Bearer <token>` on every call
//   SELFMODEL_AGENT                  without a token, development mode only: the agent id sent
//                                    as `x-agent-id` (default "node_example_agent")
//   SELFMODEL_TENANT                 the subjects' tenant (default "acme"; a token's tenant must
//                                    match it)
//   SELFMODEL_SUBJECT                the user's id (default "u-node-example")
//   SELFMODEL_PROTOS                 the include root of the .proto files (default ../../protos)
//
// Prints one JSON object: what was written, what the other node read (and each time it was
// asked again because the node had not merged the write yet), and how a write without a
// confidence is refused. Exits 1 on any unexpected failure.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const PROTOS = process.env.SELFMODEL_PROTOS || path.join(__dirname, "..", "..", "protos");
const TENANT = process.env.SELFMODEL_TENANT || "acme";
const SUBJECT_ID = process.env.SELFMODEL_SUBJECT || "u-node-example";
const DEADLINE_MS = 10000;

// The include root is protos/: the files import one another as "selfmodel/v1/model.proto".
// keepCase keeps the proto field names (handoff_token); enums as their names; no defaults
// filled in, so an unset field stays unset.
const definition = protoLoader.loadSync("selfmodel/v1/selfmodel.proto", {
  includeDirs: [PROTOS],
  keepCase: true,
  enums: String,
  longs: String,
  defaults: false,
  oneofs: true,
});
const api = grpc.loadPackageDefinition(definition).selfmodel.v1;

// The error details every node sends (docs/errors.md): google.rpc.Status in the
// `grpc-status-details-bin` trailer, its details ErrorInfo, RetryInfo, BadRequest, ... packed
// as Any. protos/google/rpc/ holds googleapis' status.proto and error_details.proto as
// published; protobufjs knows google/protobuf/{any,duration}.proto itself.
const rpc = new protobuf.Root();
rpc.resolvePath = (_origin, target) => path.join(__dirname, "protos", target);
rpc.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const Status = rpc.lookupType("google.rpc.Status");
const TYPE_PREFIX = "type.googleapis.com/";

// The details of a failed call, by type name ("google.rpc.ErrorInfo": {reason, metadata, ...}),
// or {} when it carried none.
function errorDetails(err) {
  const found = {};
  const raw = err.metadata ? err.metadata.get("grpc-status-details-bin") : [];
  if (raw.length === 0) {
    return found;
  }
  for (const any of Status.decode(raw[0]).details) {
    if (!any.type_url.startsWith(TYPE_PREFIX)) {
      continue;
    }
    const name = any.type_url.slice(TYPE_PREFIX.length);
    const type = rpc.lookup(name);
    if (type instanceof protobuf.Type) {
      found[name] = type.toObject(type.decode(any.value), { longs: Number, defaults: true });
    }
  }
  return found;
}

function durationMs(duration) {
  return Number(duration.seconds || 0) * 1000 + Math.round((duration.nanos || 0) / 1e6);
}

function metadata() {
  const md = new grpc.Metadata();
  if (process.env.SELFMODEL_TOKEN) {
    md.set("authorization", `Bearer ${process.env.SELFMODEL_TOKEN}`);
  } else {
    md.set("x-agent-id", process.env.SELFMODEL_AGENT || "node_example_agent");
  }
  return md;
}

// `deadline` (ms since the epoch): the whole logical call's, which the node sees (grpc-timeout).
function call(client, method, request, deadline = Date.now() + DEADLINE_MS) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata(), { deadline: new Date(deadline) }, (err, reply) =>
      err ? reject(err) : resolve(reply),
    );
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The longest wait between two asks of a pending read, however long it has been pending.
const MAX_PENDING_WAIT_MS = 1000;

// What a pending handoff read says (null for any other failure): UNAVAILABLE with ErrorInfo
// reason HANDOFF_POSITION_PENDING and a RetryInfo delay; `final` when the node saw that the
// deadline leaves no time to ask again.
function pendingRead(err) {
  if (err.code !== grpc.status.UNAVAILABLE) {
    return null;
  }
  const details = errorDetails(err);
  const info = details["google.rpc.ErrorInfo"];
  const retry = details["google.rpc.RetryInfo"];
  if (!info || info.reason !== "HANDOFF_POSITION_PENDING" || !retry || !retry.retry_delay) {
    return null;
  }
  return {
    reason: info.reason,
    retry_delay_ms: durationMs(retry.retry_delay),
    final: info.metadata.final === "true",
  };
}

// A read with a handoff token on a node that has not merged its position yet is answered at
// once UNAVAILABLE, reason HANDOFF_POSITION_PENDING, with a RetryInfo delay (docs/errors.md):
// the node never holds the read. Wait that delay and ask again, half as long again each
// further time (at most MAX_PENDING_WAIT_MS), until the deadline; `asked` records each pending
// answer. Every other failure, a final answer, or a wait past the deadline ends the read.
async function readAtLeast(client, request, asked) {
  const deadline = Date.now() + DEADLINE_MS;
  for (let attempt = 0; ; attempt += 1) {
    try {
      return await call(client, "GetSelfModel", request, deadline);
    } catch (err) {
      const pending = pendingRead(err);
      if (pending === null || pending.final) {
        throw err;
      }
      const waitMs = Math.min(pending.retry_delay_ms * 1.5 ** attempt, MAX_PENDING_WAIT_MS);
      if (Date.now() + waitMs >= deadline) {
        throw err;
      }
      asked.push({ ...pending, waited_ms: waitMs });
      await sleep(waitMs);
    }
  }
}

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is required (host:port of a node)`);
  }
  return value;
}

async function main() {
  const writer = new api.SelfModelService(required("SELFMODEL_WRITE"), grpc.credentials.createInsecure());
  const reader = new api.SelfModelService(required("SELFMODEL_READ"), grpc.credentials.createInsecure());
  const subject = { tenant: TENANT, kind: "SUBJECT_KIND_USER", id: SUBJECT_ID };
  try {
    const written = await call(writer, "Observe", {
      subject,
      context: "purchase_motivation",
      statement: "Motivated by quick time-to-value",
      confidence: 0.82,
      evidence: [{ kind: "EVIDENCE_KIND_CALL", ref: "crm://call/77", quote: "we need it live this quarter" }],
    });
    // The token is opaque: pass it as at_least; the other node answers the model once it has
    // merged this write, UNAVAILABLE (ask again) until then.
    const pending = [];
    const read = await readAtLeast(reader, { subject, at_least: written.handoff_token }, pending);
    const snapshot = read.snapshot;

    let refused = null;
    try {
      await call(writer, "Observe", { subject, context: "purchase_motivation", statement: "No confidence given" });
    } catch (err) {
      const violations = (errorDetails(err)["google.rpc.BadRequest"] || {}).field_violations || [];
      refused = { code: grpc.status[err.code], details: err.details, fields: violations.map((v) => v.field) };
    }

    const out = {
      written: { key: written.key, observation_id: written.observation_id, handoff_token: written.handoff_token },
      read: {
        node: snapshot.node,
        pending,
        beliefs: (snapshot.beliefs || []).map((b) => ({
          context: b.context,
          key: b.key,
          statement: b.statement,
          confidence: b.confidence,
          uncertain: Boolean(b.uncertain),
          policy: b.policy,
          supporters: (b.supporters || []).map((s) => ({
            source: s.source,
            confidence: s.confidence,
            weight: s.weight,
            evidence_factor: s.evidence_factor,
          })),
        })),
        uncertain_omitted: snapshot.uncertain_omitted || 0,
        context_min_confidence: snapshot.context_min_confidence || {},
      },
      refused_without_confidence: refused,
    };
    console.log(JSON.stringify(out));
  } finally {
    writer.close();
    reader.close();
  }
}

main().catch((err) => {
  console.error(`failed: ${err.message || err}`);
  process.exit(1);
});
