// The build goes into the Python package (src/binome/ui_dist, not committed) so that
// `pip install` ships it and binomed serves it at `/` with no npm on a production node.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  // Preact's JSX runtime through Vite's own transformer: no framework plugin needed
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: {
    outDir: "../src/binome/ui_dist",
    emptyOutDir: true,
    assetsDir: "assets",      // hashed names: binomed serves them as immutable
    target: "es2022",
    reportCompressedSize: true,
  },
});
