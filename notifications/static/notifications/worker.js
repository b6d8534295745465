/**
 * The SharedWorker that holds the browser's one notification connection for every tab of this
 * origin (share.js). Tabs talk to it over their MessagePort: attach / send / detach.
 */

import { Relay } from "./share.js";

let relay = null;

self.onconnect = (event) => {
  const port = event.ports[0];
  port.onmessage = ({ data }) => {
    if (!data || typeof data.tab !== "string") return;
    if (data.type === "attach") {
      relay ??= new Relay(data.options ?? {});
      relay.attach(data.tab, data.info ?? {}, (message) => port.postMessage(message));
    } else if (data.type === "send") {
      relay?.send(data.tab, data.frame);
    } else if (data.type === "detach") {
      relay?.detach(data.tab);
    }
  };
  port.start();
};
