import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Tests share one server per file; files run one at a time (2 shared cores).
    fileParallelism: false,
  },
});
