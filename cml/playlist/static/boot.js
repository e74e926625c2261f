// The page's entry point (a file, not an inline script: the page's CSP allows no inline script).
import { mount, httpTransport } from "/map.js";

mount(document.getElementById("cml-map-root"), httpTransport());
