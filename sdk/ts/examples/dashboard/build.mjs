// Bundles the dashboard (examples/dashboard/app.ts -> examples/dashboard/dist/app.js) with esbuild.
import { build } from "esbuild";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
await build({
  entryPoints: [join(here, "app.ts")],
  outfile: join(here, "dist", "app.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  sourcemap: true,
  minify: true,
  logLevel: "warning",
});
console.log("built examples/dashboard/dist/app.js");
