#!/usr/bin/env node
// A third-party OCPP peer for interoperability tests, built on ocpp-rpc
// (https://github.com/mikuso/ocpp-rpc) in strict mode: every call and answer it
// sends or receives is validated against ocpp-rpc's own copy of the schemas of
// its version (it ships ocpp1.6, ocpp2.0.1 and ocpp2.1).
//
// Usage:
//   node ocpp_rpc_peer.js server --port <n|0> --path /ocpp --identity CS1 --password pw \
//        --responses <file.json> [--protocols ocpp2.0.1]
//   node ocpp_rpc_peer.js client --endpoint ws://127.0.0.1:<n>/ocpp --identity CS1 \
//        --password pw --responses <file.json> [--protocols ocpp1.6,ocpp2.0.1]
//
// --protocols: comma-separated subprotocols, in order of preference (default
// ocpp2.0.1): offered by the client, accepted by the server.
//
// --responses: a JSON object {Action: responsePayload}; every incoming call is
// answered with the entry of its action (a CALLERROR NotImplemented when absent).
//
// stdin, one JSON object per line:
//   {"call": "<Action>", "params": {...}, "id": <n>}   send a call
//   {"responses": {"<Action>": {...}}}                 add or replace answers
//   {"close": true}                                    close and exit
// stdout, one JSON object per line:
//   {"event": "ready", "port": <n>}               (server: listening; client: started)
//   {"event": "connected", "identity", "protocol"}
//   {"event": "received", "method", "params", "messageId"}
//   {"event": "answered", "method", "result"}     (our answer passed strict validation)
//   {"event": "result", "id", "result"} | {"event": "error", "id", "code", "message"}
//   {"event": "strictValidationFailure", "method", "outbound", "isCall", "message"}
//   {"event": "closed", "code", "reason"}
//   {"event": "fatal", "message"}
// The process exits when stdin ends.

'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');

const { RPCServer, RPCClient, createRPCError } = require(
    path.join(__dirname, '..', '..', 'tools', 'node', 'node_modules', 'ocpp-rpc'),
);


function emit(event) {
    process.stdout.write(JSON.stringify(event) + '\n');
}

function parseArgs(argv) {
    const [mode, ...rest] = argv;
    const options = { mode };
    for (let i = 0; i < rest.length; i += 2) {
        if (!rest[i].startsWith('--') || rest[i + 1] === undefined) {
            throw new Error(`bad argument ${rest[i]}`);
        }
        options[rest[i].slice(2)] = rest[i + 1];
    }
    if (mode !== 'server' && mode !== 'client') {
        throw new Error('mode must be "server" or "client"');
    }
    return options;
}

let responses = {};
let peer = null; // the RPCClient / RPCServerClient calls go through
let server = null;

function attach(client) {
    peer = client;
    client.handle(({ method, params, messageId }) => {
        emit({ event: 'received', method, params, messageId });
        if (!Object.prototype.hasOwnProperty.call(responses, method)) {
            throw createRPCError('NotImplemented', `no answer configured for ${method}`);
        }
        return responses[method];
    });
    client.on('strictValidationFailure', ({ method, outbound, isCall, error }) => {
        emit({
            event: 'strictValidationFailure',
            method,
            outbound,
            isCall,
            message: String(error && error.message),
        });
    });
    client.on('message', ({ message, outbound }) => {
        // a CALLRESULT we sent: report what really went out
        if (!outbound) return;
        let frame;
        try {
            frame = JSON.parse(String(message));
        } catch (_) {
            return;
        }
        if (Array.isArray(frame) && frame[0] === 3) {
            emit({ event: 'answered', messageId: frame[1], result: frame[2] });
        }
    });
    client.on('close', ({ code, reason }) => {
        emit({ event: 'closed', code, reason: String(reason || '') });
        if (peer === client) peer = null;
    });
}

async function handleCommand(command) {
    if (command.responses) {
        responses = { ...responses, ...command.responses };
        return;
    }
    if (command.close) {
        await shutdown(0);
        return;
    }
    if (command.call) {
        const { id } = command;
        if (!peer) {
            emit({ event: 'error', id, code: 'NotConnected', message: 'no connection' });
            return;
        }
        try {
            const result = await peer.call(command.call, command.params || {});
            emit({ event: 'result', id, result });
        } catch (error) {
            emit({
                event: 'error',
                id,
                code: error.rpcErrorCode || error.name || 'Error',
                message: String(error.message),
                details: error.details,
            });
        }
        return;
    }
    emit({ event: 'fatal', message: `unknown command ${JSON.stringify(command)}` });
}

let stopping = false;
async function shutdown(code) {
    if (stopping) return;
    stopping = true;
    const timer = setTimeout(() => process.exit(code), 2000);
    try {
        if (server) await server.close({ force: true });
        else if (peer) await peer.close({ force: true });
    } catch (_) {
        // exiting anyway
    }
    clearTimeout(timer);
    process.exit(code);
}

async function main() {
    const options = parseArgs(process.argv.slice(2));
    const protocols = String(options.protocols || 'ocpp2.0.1')
        .split(',')
        .map((p) => p.trim())
        .filter(Boolean);
    if (options.responses) {
        responses = JSON.parse(fs.readFileSync(options.responses, 'utf8'));
    }
    const lines = readline.createInterface({ input: process.stdin });
    lines.on('line', (line) => {
        if (!line.trim()) return;
        let command;
        try {
            command = JSON.parse(line);
        } catch (error) {
            emit({ event: 'fatal', message: `bad command line: ${error.message}` });
            return;
        }
        handleCommand(command).catch((error) =>
            emit({ event: 'fatal', message: String(error && error.stack) }),
        );
    });
    lines.on('close', () => shutdown(0));

    if (options.mode === 'server') {
        const wantedPath = (options.path || '/ocpp').replace(/\/+$/, '');
        server = new RPCServer({ protocols, strictMode: true, pingIntervalMs: 0 });
        server.auth((accept, reject, handshake) => {
            const endpoint = handshake.endpoint.replace(/\/+$/, '');
            if (endpoint !== wantedPath || handshake.identity !== options.identity) {
                reject(404, 'unknown endpoint or identity');
                return;
            }
            const password = handshake.password ? handshake.password.toString('utf8') : undefined;
            if (options.password !== undefined && password !== options.password) {
                reject(401, 'bad credentials');
                return;
            }
            accept({ identity: handshake.identity });
        });
        server.on('client', (client) => {
            attach(client);
            emit({ event: 'connected', identity: client.identity, protocol: client.protocol });
        });
        const http = await server.listen(Number(options.port || 0), '127.0.0.1');
        emit({ event: 'ready', port: http.address().port });
    } else {
        const client = new RPCClient({
            endpoint: options.endpoint,
            identity: options.identity,
            password: options.password,
            protocols,
            strictMode: true,
            reconnect: false,
            pingIntervalMs: 0,
        });
        attach(client);
        emit({ event: 'ready' });
        try {
            await client.connect();
        } catch (error) {
            emit({ event: 'fatal', message: `connect failed: ${error.message}` });
            return;
        }
        emit({ event: 'connected', identity: client.identity, protocol: client.protocol });
    }
}

main().catch((error) => {
    emit({ event: 'fatal', message: String(error && error.stack) });
    process.exit(1);
});
