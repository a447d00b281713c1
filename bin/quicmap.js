#!/usr/bin/env node
// The `quicmap` command. The project is TypeScript run through tsx, so this
// shim registers tsx's loader and hands over to the CLI in cli.ts.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('./cli.ts');
process.exitCode = await main(process.argv.slice(2));
