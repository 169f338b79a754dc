// The VNC console in the page: noVNC (Debian's novnc, served under /ui/novnc) over the API's
// WebSocket, opened with a one-time ticket that the Bearer token buys (the URL carries only it).
import RFB from "/ui/novnc/core/rfb.js";
import { api } from "./app.js";

const $ = (id) => document.getElementById(id);
let rfb = null;

export function closeConsole() {
  if (rfb) rfb.disconnect();
  rfb = null;
  $("console-section").hidden = true;
}

export async function openConsole(server) {
  closeConsole();
  const ticket = await (await api("POST", `/v1/servers/${server.id}/console-ticket`)).json();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  $("console-name").textContent = server.name;
  $("console-status").textContent = "Connecting";
  $("console-section").hidden = false;
  $("screen").replaceChildren();
  rfb = new RFB($("screen"), `${scheme}//${location.host}${ticket.websocket}`, {
    credentials: { password: ticket.password },
  });
  rfb.scaleViewport = false;  // one canvas pixel per guest pixel
  rfb.addEventListener("connect", () => { $("console-status").textContent = "Connected"; });
  rfb.addEventListener("disconnect", (ev) => {
    $("console-status").textContent = ev.detail.clean ? "Disconnected" : "Connection lost";
  });
  rfb.addEventListener("securityfailure", (ev) => {
    $("console-status").textContent = "Refused: " + (ev.detail.reason || ev.detail.status);
  });
  rfb.focus();
}
