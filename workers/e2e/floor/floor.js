// The workerd floor for `scripts/bench-floor` (workers/e2e/src/bin/bench-floor.rs): a module
// Worker whose Durable Objects take a WebSocket and do almost nothing with its messages, so that
// the benchmark measures what workerd itself costs to deliver Twilio's 50 media frames a second
// into a Durable Object. Not part of the product; never deployed.
//
//   GET /listener/ws/{name}     upgrade into FloorListener {name}: server.accept() and a
//                               "message" event listener (as the Worker's CallSession does)
//   GET /hibernation/ws/{name}  upgrade into FloorHibernation {name}: this.ctx.acceptWebSocket()
//                               and webSocketMessage() (the hibernation API)
//
// Each object counts the messages of its socket. It sends the count back once every 50 messages
// (once a second at Twilio's rate) and answers the text "count" with "final:<count>", which the
// benchmark uses for the messages actually delivered.

import { DurableObject } from "cloudflare:workers";

const REPORT_EVERY = 50;

// Completes the closing handshake; newer compatibility dates do it already, and then this throws.
function closeQuietly(ws) {
  try {
    ws.close();
  } catch {
    // already closed
  }
}

export class FloorListener extends DurableObject {
  async fetch(request) {
    if (request.headers.get("Upgrade") !== "websocket") {
      return new Response("expected a WebSocket upgrade", { status: 426 });
    }
    const [client, server] = Object.values(new WebSocketPair());
    server.accept();
    let count = 0;
    server.addEventListener("message", (event) => {
      if (event.data === "count") {
        server.send(`final:${count}`);
        return;
      }
      count += 1;
      if (count % REPORT_EVERY === 0) server.send(String(count));
    });
    server.addEventListener("close", () => closeQuietly(server));
    return new Response(null, { status: 101, webSocket: client });
  }
}

export class FloorHibernation extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    // Per-object in memory: the benchmark never lets a busy object hibernate (and one socket each).
    this.count = 0;
  }

  async fetch(request) {
    if (request.headers.get("Upgrade") !== "websocket") {
      return new Response("expected a WebSocket upgrade", { status: 426 });
    }
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server);
    return new Response(null, { status: 101, webSocket: client });
  }

  webSocketMessage(ws, message) {
    if (message === "count") {
      ws.send(`final:${this.count}`);
      return;
    }
    this.count += 1;
    if (this.count % REPORT_EVERY === 0) ws.send(String(this.count));
  }

  webSocketClose(ws) {
    closeQuietly(ws);
  }
}

export default {
  async fetch(request, env) {
    const parts = new URL(request.url).pathname.split("/");
    // ["", variant, "ws", name]
    if (parts.length === 4 && parts[2] === "ws" && parts[3] !== "") {
      const namespace =
        parts[1] === "listener" ? env.LISTENER : parts[1] === "hibernation" ? env.HIBERNATION : null;
      if (namespace) return namespace.get(namespace.idFromName(parts[3])).fetch(request);
    }
    return new Response("not found", { status: 404 });
  },
};
