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
// Prints one JSON object: what was written, what the other node read, and how a write without
// a confidence is refused. Exits 1 on any unexpected failure.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

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

function metadata() {
  const md = new grpc.Metadata();
  if (process.env.SELFMODEL_TOKEN) {
    md.set("authorization", `Bearer ${process.env.SELFMODEL_TOKEN}`);
  } else {
    md.set("x-agent-id", process.env.SELFMODEL_AGENT || "node_example_agent");
  }
  return md;
}

function call(client, method, request) {
  const deadline = new Date(Date.now() + DEADLINE_MS);
  return new Promise((resolve, reject) => {
    client[method](request, metadata(), { deadline }, (err, reply) =>
      err ? reject(err) : resolve(reply),
    );
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A read with a handoff token on a node that has not merged its position yet is answered at
// once UNAVAILABLE (reason HANDOFF_POSITION_PENDING, with a RetryInfo delay; docs/errors.md):
// the node never holds the read. Ask again, waiting longer each time, until the deadline.
async function readAtLeast(client, request) {
  const deadline = Date.now() + DEADLINE_MS;
  let delayMs = 10;
  for (;;) {
    try {
      return await call(client, "GetSelfModel", request);
    } catch (err) {
      if (err.code !== grpc.status.UNAVAILABLE || Date.now() + delayMs >= deadline) {
        throw err;
      }
    }
    await sleep(delayMs);
    delayMs = Math.min(delayMs * 2, 1000);
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
    const read = await readAtLeast(reader, { subject, at_least: written.handoff_token });
    const snapshot = read.snapshot;

    let refused = null;
    try {
      await call(writer, "Observe", { subject, context: "purchase_motivation", statement: "No confidence given" });
    } catch (err) {
      refused = { code: grpc.status[err.code], details: err.details };
    }

    const out = {
      written: { key: written.key, observation_id: written.observation_id, handoff_token: written.handoff_token },
      read: {
        node: snapshot.node,
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
