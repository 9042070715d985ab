// `npm run dev`: Vite's dev server on http://127.0.0.1:5173 (the dev provider's default client
// allows http://127.0.0.1:5173/callback). It answers /config.json like serve.mjs does.
import { defineConfig } from "vite";

const authgateUrl = process.env.AUTHGATE_URL || "http://127.0.0.1:8080";

export default defineConfig({
  server: { host: "127.0.0.1", port: 5173, strictPort: true },
  plugins: [
    {
      name: "authgate-config-json",
      configureServer(server) {
        server.middlewares.use("/config.json", (_req, res) => {
          res.setHeader("content-type", "application/json");
          res.setHeader("cache-control", "no-store");
          res.end(JSON.stringify({ authgateUrl }));
        });
      },
    },
  ],
});
