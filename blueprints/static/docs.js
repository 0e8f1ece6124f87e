// The interactive API docs: Swagger UI (vendored, served by this app) on this server's /openapi.json.
// Every URL is relative to this script (<root>docs/docs.js), so the page works behind a path prefix,
// and "Try it out" sends its requests to the same server, prefix included.
(function () {
  "use strict";
  const root = new URL("..", document.currentScript.src);
  const docs = document.getElementById("docs");
  fetch(new URL("openapi.json", root), {headers: {Accept: "application/json"}})
    .then(function (response) {
      if (!response.ok) throw new Error("GET openapi.json answered " + response.status);
      return response.json();
    })
    .then(function (spec) {
      if (!spec.servers) spec.servers = [{url: root.href.replace(/\/$/, ""), description: "This server"}];
      docs.textContent = "";
      SwaggerUIBundle({spec: spec, dom_id: "#docs", tryItOutEnabled: true, validatorUrl: null});
    })
    .catch(function (error) {
      docs.textContent = "Could not load the API description: " + error.message;
    });
})();
