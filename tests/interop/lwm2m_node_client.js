// A real third-party LwM2M 1.0 client (npm lwm2m-node-lib) driven by the interop tests.
// Usage: node lwm2m_node_client.js HOST PORT ENDPOINT
// Prints one "EVENT <json>" line per event on stdout (the library logs there too); reads commands (update, set PATH RES VALUE,
// deregister, quit) from stdin, one per line.
'use strict';

var client = require('lwm2m-node-lib').client;
var readline = require('readline');

var host = process.argv[2], port = process.argv[3], endpoint = process.argv[4];
var config = {
    client: {
        lifetime: '300', version: '1.0', logLevel: 'FATAL',
        observe: {period: 500}, ipProtocol: 'udp4', serverProtocol: 'udp4'
    }
};

function emit(event) {
    process.stdout.write('EVENT ' + JSON.stringify(event) + '\n');
}

function fail(what, error) {
    emit({event: 'error', what: what, error: String(error && (error.message || error.name) || error)});
}

var device = null;

client.init(config);
client.registry.create('/3/0', function () {
    client.registry.setResource('/3/0', '0', 'Telefonica', function () {
        client.registry.setResource('/3/0', '1', 'node-lib', function () {
            client.registry.setResource('/3/0', '14', '+01:00', function () {
                client.registry.create('/3303/0', function () {
                    client.registry.setResource('/3303/0', '5700', '21.5', start);
                });
            });
        });
    });
});

function start() {
    client.register(host, port, null, endpoint, function (error, info) {
        if (error) {
            fail('register', error);
            return;
        }
        device = info;
        client.setHandler(info.serverInfo, 'write', function (objectType, objectId, resourceId, value, callback) {
            emit({event: 'write', path: '/' + objectType + '/' + objectId + '/' + resourceId, value: String(value)});
            callback(null);
        });
        client.setHandler(info.serverInfo, 'execute', function (objectType, objectId, resourceId, args, callback) {
            emit({event: 'execute', path: '/' + objectType + '/' + objectId + '/' + resourceId, args: String(args || '')});
            callback(null);
        });
        emit({event: 'registered', location: info.location, port: info.localPort});
    });
}

readline.createInterface({input: process.stdin}).on('line', function (line) {
    var words = line.trim().split(' ');
    if (words[0] === 'update') {
        client.update(device, function (error) {
            if (error) { fail('update', error); } else { emit({event: 'updated'}); }
        });
    } else if (words[0] === 'set') {
        client.registry.setResource(words[1], words[2], words.slice(3).join(' '), function (error) {
            if (error) { fail('set', error); } else { emit({event: 'set'}); }
        });
    } else if (words[0] === 'deregister') {
        client.unregister(device, function (error) {
            if (error) { fail('deregister', error); } else { emit({event: 'deregistered'}); }
        });
    } else if (words[0] === 'quit') {
        process.exit(0);
    }
});
