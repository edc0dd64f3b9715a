// The reference point of `npm run bench`: a bare h3 app answering the same JSON as a warm run.
import { createServer } from "node:http";
import { createApp, createRouter, defineEventHandler, readBody, toNodeListener } from "h3";

const app = createApp();
const router = createRouter();
router.post(
  "/v2/functions/:workspace/run/:function",
  defineEventHandler(async (event) => {
    const body = await readBody(event);
    return { result: `Hello ${body.parameters.name}`, logs: [], duration: 0 };
  }),
);
app.use(router);
const server = createServer(toNodeListener(app)).listen(Number(process.env.PORT), "127.0.0.1", () => process.stdout.write("ready\n"));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
