// `npm run dev`: Vite's dev server on http://127.0.0.1:5173 (the dev provider's default client
// allows http://127.0.0.1:5173/callback). It answers /config.json like serve.mjs does, from the
// same AUTHGATE_URL, COOKIE_MODE and BACKEND_URL.
import { defineConfig } from "vite";

const authgateUrl = process.env.AUTHGATE_URL || "http://127.0.0.1:8080";
const cookieMode = process.env.COOKIE_MODE === "1";
const backendUrl = process.env.BACKEND_URL || "";

export default defineConfig({
  server: { host: "127.0.0.1", port: 5173, strictPort: true },
  plugins: [
    {
      name: "authgate-config-json",
      configureServer(server) {
        server.middlewares.use("/config.json", (_req, res) => {
          res.setHeader("content-type", "application/json");
          res.setHeader("cache-control", "no-store");
          res.end(JSON.stringify({ authgateUrl, cookieMode, ...(backendUrl ? { backendUrl } : {}) }));
        });
      },
    },
  ],
});
